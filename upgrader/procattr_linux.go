package upgrader

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

// workerProcAttr makes the kernel kill a worker when its master dies,
// even by SIGKILL; the lifeline pipe covers the other systems.
func workerProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// Pdeathsig fires when the thread that forked the child exits, not only
// the process (golang/go#27505), and the Go runtime ends a thread whose
// goroutine exits while locked to it. So workers are forked from one
// goroutine locked to its thread for the life of the process.
var (
	spawnOnce sync.Once
	spawnC    chan spawnReq
)

type spawnReq struct {
	cmd  *exec.Cmd
	errc chan error
}

// startCmd starts cmd from the spawning thread.
func startCmd(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnC = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives as long as the process
			for req := range spawnC {
				req.errc <- req.cmd.Start()
			}
		}()
	})
	errc := make(chan error, 1)
	spawnC <- spawnReq{cmd, errc}
	return <-errc
}

// ownImage names the executable image of this process, which a forked
// child execs as /proc/self/exe: the file that was started, even if the
// path now holds another binary or nothing.
func ownImage(string) string { return "/proc/self/exe" }

// openImage opens the executable image of process pid.
func openImage(pid int) (*os.File, error) {
	return os.Open(fmt.Sprintf("/proc/%d/exe", pid))
}

// imagePath names the open image f for a process this one forks: through
// this process's fd table, which the child's own descriptor shuffling
// before exec cannot disturb.
func imagePath(f *os.File) string {
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), f.Fd())
}
