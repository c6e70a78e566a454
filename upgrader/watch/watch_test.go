package watch

import (
	"path/filepath"
	"testing"

	"github.com/fsnotify/fsnotify"
)

func TestPathsWithoutPathsIsNoHook(t *testing.T) {
	if Paths() != nil {
		t.Fatal("Paths() with no path: got a hook, want nil (no watcher)")
	}
}

// The changes that upgrade: a watched file's, anything under a watched
// folder; never the service's own files, their temporary files, the PID
// folder's probe, or a bare mode change.
func TestWatched(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "etc", "app.conf")
	src := filepath.Join(dir, "src")
	pid := filepath.Join(src, "run", "app.pid")
	s := &set{
		files: map[string]bool{cfg: true},
		dirs:  map[string]bool{src: true},
		own:   []string{pid, filepath.Join(src, "run", "app.sock")},
	}
	for _, tc := range []struct {
		name string
		ev   fsnotify.Event
		want bool
	}{
		{"watched file written", fsnotify.Event{Name: cfg, Op: fsnotify.Write}, true},
		{"watched file renamed over", fsnotify.Event{Name: cfg, Op: fsnotify.Create}, true},
		{"other file in the watched file's folder", fsnotify.Event{Name: filepath.Join(dir, "etc", "other"), Op: fsnotify.Write}, false},
		{"file under a watched folder", fsnotify.Event{Name: filepath.Join(src, "a", "b.js"), Op: fsnotify.Write}, true},
		{"the watched folder itself", fsnotify.Event{Name: src, Op: fsnotify.Remove}, true},
		{"a folder next to it, same prefix", fsnotify.Event{Name: src + "2/x", Op: fsnotify.Write}, false},
		{"mode change only", fsnotify.Event{Name: cfg, Op: fsnotify.Chmod}, false},
		{"own PID file", fsnotify.Event{Name: pid, Op: fsnotify.Create}, false},
		{"own PID file's temporary file", fsnotify.Event{Name: filepath.Join(src, "run", ".app.pid.tmp123"), Op: fsnotify.Create}, false},
		{"own control socket", fsnotify.Event{Name: filepath.Join(src, "run", "app.sock"), Op: fsnotify.Create}, false},
		{"PID folder probe", fsnotify.Event{Name: filepath.Join(src, "run", ".handoff-probe42"), Op: fsnotify.Create}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := s.watched(tc.ev); got != tc.want {
				t.Errorf("watched(%v) = %v, want %v", tc.ev, got, tc.want)
			}
		})
	}
}
