//go:build !linux

package upgrader

import "os"

// treeEnv marks the processes of one upgrade's new generation
// (tree_linux.go); elsewhere nothing looks for them.
const treeEnv = "HANDOFF_UPGRADE_TREE"

type treeMark struct{}

func markTree() (treeMark, func()) { return treeMark{}, func() { os.Unsetenv(treeEnv) } }

// killTree: without /proc, what a failed new generation left is not
// looked for.
func (u *Upgrader) killTree(treeMark, error) {}
