package upgrader

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"
)

// stateName is the name under which the generation state file is passed
// from one generation to the next.
const stateName = "handoff-state"

// genState is what one generation tells the next, and the next tells the
// previous one when it is ready. It travels in an unlinked file whose
// descriptor is inherited, so nothing leaks into the environment.
type genState struct {
	Generation int       `json:"generation"`
	PID        int       `json:"pid"`
	Version    string    `json:"version,omitempty"`
	FirstStart time.Time `json:"first_start"`
	// UpgradeStart is when the generation that wrote it started the
	// upgrade; Stats are the service's counters so far (metrics.go).
	UpgradeStart time.Time `json:"upgrade_start,omitzero"`
	Stats        *stats    `json:"stats,omitempty"`
	// Drains are left by old generations after their drains, for the
	// serving generation to count (metrics.go, overlap.go).
	Drains []drainRecord `json:"drains,omitempty"`
	// Draining lists the old generations still draining, each of which
	// registers itself there (overlap.go).
	Draining []drainingGen `json:"draining,omitempty"`
	// Stopping is set by a generation that stops as asked, for a previous
	// generation standing by (probation.go).
	Stopping bool `json:"stopping,omitempty"`
	// Conns is where the generation that wrote it receives the
	// connections of the one before, by the key of the sockets its server
	// serves (httppass.go).
	Conns map[string]string `json:"conns_by_server,omitempty"`
}

// stateFile is shared by every generation of a service. Mostly one of them
// writes at a time: the serving one before it starts an upgrade, the new
// one just before it reports ready. An old generation's drain record and a
// new one's stop mark can meet, so every access holds a lock of the whole
// file (lockFile: an open-file-description lock on Linux, taken through a
// description of its own, fds_lock_linux.go).
type stateFile struct {
	f *os.File
}

func newStateFile() (*stateFile, error) {
	f, err := createStateFile()
	if err != nil {
		return nil, fmt.Errorf("upgrader: create state file: %w", err)
	}
	return &stateFile{f: f}, nil
}

// tempStateFile is the state file where there is no memfd: an unlinked
// temporary file.
func tempStateFile() (*os.File, error) {
	f, err := os.CreateTemp("", "handoff-state-*")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name())
	return f, nil
}

// write replaces what one generation tells the next; the lists the
// draining generations keep there, Drains and Draining, stay as they are.
func (s *stateFile) write(st genState) error {
	unlock := lockFile(s.f, true)
	defer unlock()
	if old, err := s.readLocked(); err == nil {
		st.Drains, st.Draining = old.Drains, old.Draining
	}
	return s.writeLocked(st)
}

// update changes the state with fn, read and written under one lock, so
// that two generations updating it at once lose neither change.
func (s *stateFile) update(fn func(*genState)) error {
	unlock := lockFile(s.f, true)
	defer unlock()
	st, err := s.readLocked()
	if err != nil {
		return err
	}
	fn(&st)
	return s.writeLocked(st)
}

func (s *stateFile) writeLocked(st genState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := s.f.Truncate(0); err != nil {
		return fmt.Errorf("upgrader: write state: %w", err)
	}
	if _, err := s.f.WriteAt(b, 0); err != nil {
		return fmt.Errorf("upgrader: write state: %w", err)
	}
	return nil
}

func (s *stateFile) read() (genState, error) {
	unlock := lockFile(s.f, false)
	defer unlock()
	return s.readLocked()
}

func (s *stateFile) readLocked() (genState, error) {
	var st genState
	b, err := io.ReadAll(io.NewSectionReader(s.f, 0, 1<<20))
	if err != nil {
		return st, fmt.Errorf("upgrader: read state: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("upgrader: read state: %w", err)
	}
	return st, nil
}
