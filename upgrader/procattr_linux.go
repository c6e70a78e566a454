package upgrader

import "syscall"

// workerProcAttr makes the kernel kill a worker when its master dies,
// even by SIGKILL; the lifeline pipe covers the other systems.
func workerProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
