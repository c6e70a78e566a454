//go:build !linux

package upgrader

import (
	"os/exec"
	"syscall"
)

// workerProcAttr: without Pdeathsig, a worker notices its master's death
// by the EOF on its lifeline (stdin).
func workerProcAttr() *syscall.SysProcAttr { return nil }

func startCmd(cmd *exec.Cmd) error { return cmd.Start() }

// ownImage: without /proc, workers run the file now at the master's path.
func ownImage(path string) string { return path }
