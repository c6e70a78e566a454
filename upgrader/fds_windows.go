//go:build windows

package upgrader

import (
	"errors"
	"os"
	"syscall"
)

// dupOnto is not needed on Windows, where a service cannot upgrade.
func dupOnto(*os.File, int) error { return errors.New("not supported on windows") }

func closeOnExec(int) {}

// socketFile: there are no worker processes on Windows.
func socketFile(syscall.Conn, string) (*os.File, error) {
	return nil, errors.New("not supported on windows")
}

// lockFile: generations do not overlap on Windows.
func lockFile(*os.File, bool) (unlock func()) { return func() {} }

// clearSocketMode: Windows has no socket file modes.
func clearSocketMode(uintptr) {}
