//go:build !linux

package upgrader

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
)

// workerProcAttr: without Pdeathsig, a worker notices its master's death
// by the EOF on its lifeline (stdin).
func workerProcAttr() *syscall.SysProcAttr { return nil }

func startCmd(cmd *exec.Cmd) error { return cmd.Start() }

// ownImage: without /proc, workers run the file now at the master's path.
func ownImage(path string) string { return path }

// openImage: without /proc, the previous generation's image cannot be
// named, and workers are not rolled back.
func openImage(int) (*os.File, error) { return nil, errors.ErrUnsupported }

func imagePath(f *os.File) string { return f.Name() }
