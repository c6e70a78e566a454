package upgrader

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/gohandoff/handoff/pidfile"
)

// checkPIDDir fails early, with the folder's name, when the PID file's
// folder cannot be written, creating it if it is missing.
func checkPIDDir(path string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("upgrader: pid file folder: %w", err)
	}
	f, err := os.CreateTemp(dir, ".handoff-probe*")
	if err != nil {
		return fmt.Errorf("upgrader: pid file folder %s is not writable: %w", dir, err)
	}
	f.Close()
	os.Remove(f.Name())
	return nil
}

// PID files are the pidfile package's; their errors name the upgrader.

func writePIDFile(path string, pids ...int) error {
	if err := pidfile.Write(path, pids...); err != nil {
		return fmt.Errorf("upgrader: %w", err)
	}
	return nil
}

func checkPIDPath(path string) error {
	if err := pidfile.Check(path); err != nil {
		return fmt.Errorf("upgrader: %w", err)
	}
	return nil
}

func readPIDFile(path string) ([]int, error) { return pidfile.Read(path) }

// OwnFiles returns the paths this service writes itself and removes: its
// PID file, workers PID file and control socket, those that are set. A
// file watcher (upgrader/watch) ignores their changes.
func (u *Upgrader) OwnFiles() []string {
	var own []string
	for _, p := range []string{u.opts.PIDFile, u.opts.WorkersPIDFile, u.opts.ControlSocket} {
		if p != "" {
			own = append(own, p)
		}
	}
	return own
}
