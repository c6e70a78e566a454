//go:build !linux

package upgrader

import "syscall"

// workerProcAttr: without Pdeathsig, a worker notices its master's death
// by the EOF on its lifeline (stdin).
func workerProcAttr() *syscall.SysProcAttr { return nil }
