// Package pidfile reads and writes PID files as handoff services keep
// them: positive decimal pids, one a line, replaced atomically (a
// temporary file renamed over the path, so a reader sees the old content
// or the new, and a symlink planted at the path is replaced, never
// followed), and only ever over a file that holds nothing but pids.
// The service, the handoff CLI and the bench share it.
package pidfile

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// maxPIDFileSize bounds what is read of a file found at a PID file's path.
const maxPIDFileSize = 1 << 20

// Write writes pids, one a line, to path atomically: a temporary file
// in the same folder is renamed over path, so readers see the old or the new
// content and a symlink planted at path is replaced, never followed. It only
// ever replaces a file that holds nothing but pids (see Check).
func Write(path string, pids ...int) error {
	if err := Check(path); err != nil {
		return err
	}
	var b bytes.Buffer
	for _, pid := range pids {
		b.WriteString(strconv.Itoa(pid))
		b.WriteByte('\n')
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return fmt.Errorf("write pid file %s: %w", path, err)
	}
	tmp := f.Name()
	_, werr := f.Write(b.Bytes())
	if werr == nil {
		werr = f.Chmod(0o644)
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp, path)
	}
	if werr != nil {
		os.Remove(tmp)
		return fmt.Errorf("write pid file %s: %w", path, werr)
	}
	return nil
}

// Check reports whether path may be written as a PID file: nothing
// is there, or a symlink (replaced, never followed), or a regular file that
// holds nothing but pids. Anything else (a file with other content, a
// folder, a device such as /dev/null, a socket) is refused, with an error
// naming it.
func Check(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("pid file %s: %w", path, err)
	case fi.Mode()&os.ModeSymlink != 0:
		return nil
	case fi.IsDir():
		return fmt.Errorf("pid file %s is a folder, not a pid file", path)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("pid file %s is not a regular file (%s): refusing to replace it", path, fileKind(fi.Mode()))
	case fi.Size() > maxPIDFileSize:
		return fmt.Errorf("pid file %s holds %d bytes, not a list of pids: refusing to replace it", path, fi.Size())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("pid file %s: %w", path, err)
	}
	if _, err := Parse(b); err != nil {
		return fmt.Errorf("pid file %s holds something else than pids (%w): refusing to replace it; remove it or choose another path", path, err)
	}
	return nil
}

func fileKind(m os.FileMode) string {
	switch {
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a block device"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeNamedPipe != 0:
		return "a named pipe"
	}
	return m.Type().String()
}

// Read returns the pids listed in path, one a line.
func Read(path string) ([]int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pids, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("pid file %s: %w", path, err)
	}
	return pids, nil
}

// Parse parses the content of a PID file: positive decimal pids, one a
// line, surrounding white space ignored.
func Parse(b []byte) ([]int, error) {
	var pids []int
	for i, line := range bytes.Split(b, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		pid, err := strconv.Atoi(string(line))
		if err != nil || pid <= 0 {
			return nil, fmt.Errorf("line %d: %q is not a pid", i+1, truncate(line, 32))
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
