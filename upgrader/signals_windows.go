//go:build windows

package upgrader

import (
	"errors"
	"os"
)

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

// terminate is not needed on Windows, where a service cannot upgrade.
func terminate(int) error { return errors.New("not supported on windows") }
