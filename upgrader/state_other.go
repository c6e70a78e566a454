//go:build !linux

package upgrader

import "os"

// createStateFile makes the state file: an unlinked temporary file.
func createStateFile() (*os.File, error) { return tempStateFile() }

// id names the service the state file belongs to; connections are handed
// over on Linux only.
func (s *stateFile) id() string { return "" }
