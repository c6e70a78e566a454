//go:build !windows

package upgrader

import (
	"os"
	"syscall"
)

var (
	upgradeSignals = []os.Signal{syscall.SIGHUP}
	stopSignals    = []os.Signal{syscall.SIGTERM, syscall.SIGINT}
)

func isUpgradeSignal(sig os.Signal) bool { return sig == syscall.SIGHUP }

// processAlive reports whether a process with pid exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || err == syscall.EPERM
}

// terminate asks the process pid to stop gracefully.
func terminate(pid int) error { return syscall.Kill(pid, syscall.SIGTERM) }
