//go:build !linux

package steer

import "os"

// Group is unsupported here.
type Group struct{}

// Check returns ErrUnsupported: steering needs Linux.
func Check() error { return ErrUnsupported }

// New returns ErrUnsupported.
func New([]*os.File) (*Group, error) { return nil, ErrUnsupported }

// Add returns ErrUnsupported.
func (g *Group) Add() (int, *os.File, error) { return 0, nil, ErrUnsupported }

// Len is 0.
func (g *Group) Len() int { return 0 }

// File is nil.
func (g *Group) File(int) *os.File { return nil }

// Port is 0.
func (g *Group) Port() int { return 0 }

// Steer returns ErrUnsupported.
func (g *Group) Steer([]int) error { return ErrUnsupported }

// Queued returns ErrUnsupported.
func (g *Group) Queued(int) (int, error) { return 0, ErrUnsupported }

// Close does nothing.
func (g *Group) Close() {}

// Held returns ErrUnsupported.
func Held(int, []int) (int, error) { return 0, ErrUnsupported }
