//go:build !windows

package upgrader

import (
	"os"
	"syscall"
)

var (
	upgradeSignals = []os.Signal{syscall.SIGHUP}
	stopSignals    = []os.Signal{syscall.SIGTERM, syscall.SIGINT}
	rollSignals    = []os.Signal{syscall.SIGUSR2}
	// masterSignals are the master's alone: a worker ignores them.
	masterSignals = []os.Signal{syscall.SIGHUP, syscall.SIGUSR2}
)

func isUpgradeSignal(sig os.Signal) bool { return sig == syscall.SIGHUP }

func isRollSignal(sig os.Signal) bool { return sig == syscall.SIGUSR2 }

// terminate asks the process pid to stop gracefully.
func terminate(pid int) error { return syscall.Kill(pid, syscall.SIGTERM) }
