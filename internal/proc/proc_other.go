//go:build !linux

package proc

import "context"

func waitPidfd(context.Context, int) (bool, error) { return false, nil }
