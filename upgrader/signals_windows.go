//go:build windows

package upgrader

import "os"

// Windows has no SIGHUP: a service there builds and serves, but cannot
// upgrade.
var (
	upgradeSignals = []os.Signal{}
	stopSignals    = []os.Signal{os.Interrupt}
	rollSignals    = []os.Signal{}
	masterSignals  = []os.Signal{}
)

func isUpgradeSignal(os.Signal) bool { return false }

func isRollSignal(os.Signal) bool { return false }
