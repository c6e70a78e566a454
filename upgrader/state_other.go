//go:build !linux

package upgrader

import "os"

// createStateFile makes the state file: an unlinked temporary file.
func createStateFile() (*os.File, error) { return tempStateFile() }
