//go:build !windows

package main

import (
	"bytes"
	"fmt"
	"os"
	"syscall"
)

// processGone reports whether pid has exited. A zombie waiting for its
// new parent (the previous generation exited before it) counts as gone.
func processGone(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && err != syscall.EPERM {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false // no procfs: kill(0) is all we know
	}
	i := bytes.LastIndexByte(stat, ')')
	return i > 0 && len(stat) > i+2 && stat[i+2] == 'Z'
}
