//go:build !linux

package upgrader

import "errors"

// endParentLink needs /proc to find tableflip's pipe: elsewhere the next
// upgrade waits until this generation has exited (see overlap.go).
func endParentLink(int) error {
	return errors.New("ending tableflip's parent link needs Linux")
}
