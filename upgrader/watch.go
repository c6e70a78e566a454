package upgrader

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// WatchDebounce is how long the watched files must stay unchanged after a
// change before the upgrade starts: a build that writes many files causes
// one upgrade.
const WatchDebounce = 300 * time.Millisecond

// watch upgrades this generation when a file or folder of Options.Watch
// changes, once per burst of changes, until done is closed. A failed
// upgrade is logged, and the next change tries again. Folders are watched
// with their subfolders; a file is watched through its folder, so that
// replacing it by a rename is seen too.
func (u *Upgrader) watch(done <-chan struct{}) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("upgrader: watch: %w", err)
	}
	defer w.Close()
	files := make(map[string]bool) // watched files, by absolute path
	dirs := make(map[string]bool)  // folders watched whole
	for _, p := range u.opts.Watch {
		abs, err := filepath.Abs(p)
		if err != nil {
			return fmt.Errorf("upgrader: watch %s: %w", p, err)
		}
		fi, err := os.Stat(abs)
		if err != nil {
			return fmt.Errorf("upgrader: watch: %w", err)
		}
		if fi.IsDir() {
			dirs[abs] = true
			if err := addTree(w, abs); err != nil {
				return err
			}
			continue
		}
		files[abs] = true
		if err := w.Add(filepath.Dir(abs)); err != nil {
			return fmt.Errorf("upgrader: watch %s: %w", abs, err)
		}
	}
	u.log.Info("watching for changes", "paths", strings.Join(u.opts.Watch, ","))

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var changed string
	for {
		select {
		case <-done:
			return nil
		case err := <-w.Errors:
			u.log.Warn("watch error", "err", err)
		case ev := <-w.Events:
			if !u.watched(ev, files, dirs) {
				continue
			}
			if ev.Has(fsnotify.Create) {
				if fi, err := os.Stat(ev.Name); err == nil && fi.IsDir() && u.underDir(ev.Name, dirs) {
					addTree(w, ev.Name)
				}
			}
			changed = ev.Name
			timer.Reset(WatchDebounce)
		case <-timer.C:
			u.log.Info("change detected, upgrading", "path", changed)
			ctx, cancel := context.WithTimeout(context.Background(), u.upgradeWait())
			_, err := u.Upgrade(ctx)
			cancel()
			if err != nil {
				u.log.Error("upgrade on change failed, retrying on the next change", "path", changed, "err", err)
			}
		}
	}
}

// watched tells the changes that matter: those of a watched file, or of
// anything under a watched folder, but for the service's own PID files
// and control socket (and their temporary files) and bare mode changes.
func (u *Upgrader) watched(ev fsnotify.Event, files, dirs map[string]bool) bool {
	if ev.Op == fsnotify.Chmod {
		return false
	}
	for _, own := range []string{u.opts.PIDFile, u.opts.WorkersPIDFile, u.opts.ControlSocket} {
		if own == "" {
			continue
		}
		abs, _ := filepath.Abs(own)
		if ev.Name == abs || strings.HasPrefix(ev.Name, filepath.Join(filepath.Dir(abs), "."+filepath.Base(abs)+".tmp")) {
			return false
		}
	}
	if strings.HasPrefix(filepath.Base(ev.Name), ".handoff-probe") {
		return false
	}
	return files[ev.Name] || u.underDir(ev.Name, dirs)
}

func (u *Upgrader) underDir(path string, dirs map[string]bool) bool {
	for d := range dirs {
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
