package pidfile

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, in string
		want     []int
		err      string
	}{
		{"one", "123\n", []int{123}, ""},
		{"no newline", "123", []int{123}, ""},
		{"two", "12\n34\n", []int{12, 34}, ""},
		{"blanks and spaces", "\n  12 \r\n\n\t34\n\n", []int{12, 34}, ""},
		{"empty", "", nil, ""},
		{"zero", "0\n", nil, `line 1: "0" is not a pid`},
		{"negative", "12\n-3\n", nil, `line 2: "-3" is not a pid`},
		{"word", "hello\n", nil, `line 1: "hello" is not a pid`},
		{"two on a line", "12 34\n", nil, `line 1: "12 34" is not a pid`},
		{"overflow", "99999999999999999999\n", nil, "is not a pid"},
		{"long junk cut", strings.Repeat("x", 100), nil, fmt.Sprintf("%q is not a pid", strings.Repeat("x", 32))},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			got, err := Parse([]byte(c.in))
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("Parse(%q) = %v, %v; want error %q", c.in, got, err, c.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, c.want) {
				t.Fatalf("Parse(%q) = %v, %v; want %v", c.in, got, err, c.want)
			}
		})
	}
}

func TestWrite(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "svc.pid")
	if err := Write(path, 12, 34); err != nil {
		t.Fatal(err)
	}
	got, err := Read(path)
	if err != nil || !slices.Equal(got, []int{12, 34}) {
		t.Fatalf("Read = %v, %v; want [12 34]", got, err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v %v, want 0644", fi.Mode(), err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("folder holds %d files, want only the pid file", len(ents))
	}
}

// A symlink planted at the PID file's path is replaced, its target left
// alone.
func TestWriteReplacesSymlink(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "svc.pid")
	if err := os.Symlink(victim, path); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, 42); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(path); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("pid file %v %v, want a regular file", fi.Mode(), err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious" {
		t.Errorf("symlink target now holds %q, want it untouched", b)
	}
	if b, _ := os.ReadFile(path); string(b) != "42\n" {
		t.Errorf("pid file holds %q, want 42", b)
	}
}

func TestWriteUnwritableFolder(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "missing")
	err := Write(filepath.Join(dir, "svc.pid"), 42)
	if err == nil || !strings.HasPrefix(err.Error(), "write pid file "+dir) {
		t.Fatalf("Write in a missing folder: %v, want an error naming the file", err)
	}
}

// FuzzParse: Parse never panics, accepts only positive pids, and
// reads back what Write's format writes.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"123\n", "1\n2\n3\n", " 7 \r\n", "", "\n\n", "0", "-1", "+5", "0x10", "1e3", "99999999999999999999", "12 34", "\x00", "١٢٣"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		pids, err := Parse(b)
		if err != nil {
			if pids != nil {
				t.Fatalf("Parse(%q) = %v with error %v", b, pids, err)
			}
			return
		}
		var out strings.Builder
		for _, pid := range pids {
			if pid <= 0 {
				t.Fatalf("Parse(%q) accepted pid %d", b, pid)
			}
			out.WriteString(strconv.Itoa(pid) + "\n")
		}
		again, err := Parse([]byte(out.String()))
		if err != nil || !slices.Equal(again, pids) {
			t.Fatalf("round trip of %v: %v, %v", pids, again, err)
		}
	})
}
