//go:build windows

package upgrader

// monotonicUsec: there is no systemd on Windows.
func monotonicUsec() (uint64, bool) { return 0, false }
