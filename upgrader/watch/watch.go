// Package watch upgrades a service when files change: a hook for
// upgrader.Options.Watch, kept out of package upgrader so that only the
// programs that watch files pay for fsnotify.
//
//	opts := upgrader.Options{PIDFile: "run/app.pid", Watch: watch.Paths("config/", "bin/app")}
package watch

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/gohandoff/handoff/upgrader"
)

// Debounce is how long the watched files must stay unchanged after a
// change before the upgrade starts: a build that writes many files causes
// one upgrade.
const Debounce = 300 * time.Millisecond

// Paths returns an upgrader.Options.Watch hook that upgrades the service
// when a file or folder of paths changes, once per burst of changes. A
// failed upgrade is logged, and the next change tries again. Folders are
// watched with their subfolders; a file is watched through its folder, so
// that replacing it by a rename is seen too. The service's own PID files
// and control socket are ignored. With no paths it returns nil: no hook.
func Paths(paths ...string) func(ctx context.Context, u *upgrader.Upgrader) error {
	if len(paths) == 0 {
		return nil
	}
	paths = append([]string(nil), paths...)
	return func(ctx context.Context, u *upgrader.Upgrader) error {
		return run(ctx, u, paths)
	}
}

func run(ctx context.Context, u *upgrader.Upgrader, paths []string) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("upgrader: watch: %w", err)
	}
	defer w.Close()
	s := &set{files: make(map[string]bool), dirs: make(map[string]bool)}
	for _, p := range u.OwnFiles() {
		if abs, err := filepath.Abs(p); err == nil {
			s.own = append(s.own, abs)
		}
	}
	for _, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return fmt.Errorf("upgrader: watch %s: %w", p, err)
		}
		fi, err := os.Stat(abs)
		if err != nil {
			return fmt.Errorf("upgrader: watch: %w", err)
		}
		if fi.IsDir() {
			s.dirs[abs] = true
			if err := addTree(w, abs); err != nil {
				return err
			}
			continue
		}
		s.files[abs] = true
		if err := w.Add(filepath.Dir(abs)); err != nil {
			return fmt.Errorf("upgrader: watch %s: %w", abs, err)
		}
	}
	log := u.Logger()
	log.Info("watching for changes", "paths", strings.Join(paths, ","))

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var changed string
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-w.Errors:
			log.Warn("watch error", "err", err)
		case ev := <-w.Events:
			if !s.watched(ev) {
				continue
			}
			if ev.Has(fsnotify.Create) {
				if fi, err := os.Stat(ev.Name); err == nil && fi.IsDir() && s.underDir(ev.Name) {
					addTree(w, ev.Name)
				}
			}
			changed = ev.Name
			timer.Reset(Debounce)
		case <-timer.C:
			log.Info("change detected, upgrading", "path", changed)
			if _, err := u.Upgrade(ctx); err != nil {
				log.Error("upgrade on change failed, retrying on the next change", "path", changed, "err", err)
			}
		}
	}
}

// set is what is watched: files by absolute path, folders whole, and the
// service's own files, never a reason to upgrade.
type set struct {
	files, dirs map[string]bool
	own         []string
}

// watched tells the changes that matter: those of a watched file, or of
// anything under a watched folder, but for the service's own PID files
// and control socket (and their temporary files) and bare mode changes.
func (s *set) watched(ev fsnotify.Event) bool {
	if ev.Op == fsnotify.Chmod {
		return false
	}
	for _, abs := range s.own {
		if ev.Name == abs || strings.HasPrefix(ev.Name, filepath.Join(filepath.Dir(abs), "."+filepath.Base(abs)+".tmp")) {
			return false
		}
	}
	if strings.HasPrefix(filepath.Base(ev.Name), ".handoff-probe") {
		return false
	}
	return s.files[ev.Name] || s.underDir(ev.Name)
}

func (s *set) underDir(path string) bool {
	for d := range s.dirs {
		if path == d || strings.HasPrefix(path, d+string(filepath.Separator)) {
			return true
		}
	}
	return false
}

// addTree watches root and its subfolders.
func addTree(w *fsnotify.Watcher, root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if err := w.Add(p); err != nil {
			return fmt.Errorf("upgrader: watch %s: %w", p, err)
		}
		return nil
	})
}
