//go:build unix

package upgrader

import (
	"context"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/cloudflare/tableflip"
	"github.com/gohandoff/handoff/internal/handover"
)

// fakeHandover stands for tableflip in the test process, where tableflip
// allows one Upgrader for good: sockets and files are kept in maps, the
// handshake is counted, and what a real one would do to the previous or
// the next generation is up to the test.
type fakeHandover struct {
	mu      sync.Mutex
	parent  bool
	files   map[string]*os.File
	lns     map[string]net.Listener
	pcs     map[string]net.PacketConn
	owned   []interface{ Close() error } // what the fake created, closed at cleanup
	opts    tableflip.Options
	readies int
	stops   int
	// readyErr is what Ready returns; onUpgrade runs in Upgrade (the new
	// generation's part) and its error is Upgrade's.
	readyErr  error
	onUpgrade func() error
	upgrades  int
	upgraded  bool

	exit        chan struct{}
	exitOnce    sync.Once
	parentEnded chan struct{} // WaitForParent returns once closed
}

func newFakeHandover(t *testing.T) *fakeHandover {
	h := &fakeHandover{
		files: map[string]*os.File{}, lns: map[string]net.Listener{}, pcs: map[string]net.PacketConn{},
		exit: make(chan struct{}), parentEnded: make(chan struct{}),
	}
	t.Cleanup(func() {
		h.endParent()
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, c := range h.owned {
			c.Close()
		}
	})
	return h
}

func (h *fakeHandover) endParent() {
	h.mu.Lock()
	defer h.mu.Unlock()
	select {
	case <-h.parentEnded:
	default:
		close(h.parentEnded)
	}
}

func handoverKey(network, addr string) string { return network + " " + addr }

func (h *fakeHandover) Listen(network, addr string) (net.Listener, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ln := h.lns[handoverKey(network, addr)]; ln != nil {
		return ln, nil
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, err
	}
	h.lns[handoverKey(network, addr)] = ln
	h.owned = append(h.owned, ln)
	return ln, nil
}

func (h *fakeHandover) ListenPacket(network, addr string) (net.PacketConn, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if pc := h.pcs[handoverKey(network, addr)]; pc != nil {
		return pc, nil
	}
	pc, err := net.ListenPacket(network, addr)
	if err != nil {
		return nil, err
	}
	h.pcs[handoverKey(network, addr)] = pc
	h.owned = append(h.owned, pc)
	return pc, nil
}

func (h *fakeHandover) Listener(network, addr string) (net.Listener, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lns[handoverKey(network, addr)], nil
}

func (h *fakeHandover) PacketConn(network, addr string) (net.PacketConn, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.pcs[handoverKey(network, addr)], nil
}

func (h *fakeHandover) AddListener(network, addr string, ln tableflip.Listener) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lns[handoverKey(network, addr)] = ln
	return nil
}

func (h *fakeHandover) AddPacketConn(network, addr string, pc tableflip.PacketConn) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pcs[handoverKey(network, addr)] = pc
	return nil
}

func (h *fakeHandover) File(name string) (*os.File, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.files[name], nil
}

func (h *fakeHandover) AddFile(name string, f *os.File) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.files[name] = f
	return nil
}

func (h *fakeHandover) HasParent() bool { return h.parent }

func (h *fakeHandover) Ready() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.readies++
	return h.readyErr
}

// Upgrade runs the new generation's part, then, as tableflip does once the
// new generation is ready, closes Exit. Like tableflip's, it refuses once
// stopped or upgraded, with the errors of internal/handover.
func (h *fakeHandover) Upgrade() error {
	h.mu.Lock()
	h.upgrades++
	fn, upgraded, stopped := h.onUpgrade, h.upgraded, h.stops > 0
	h.mu.Unlock()
	switch {
	case stopped:
		return handover.ErrStopping
	case upgraded:
		return handover.ErrUpgraded
	}
	if fn != nil {
		if err := fn(); err != nil {
			return err
		}
	}
	h.mu.Lock()
	h.upgraded = true
	h.mu.Unlock()
	h.exitOnce.Do(func() { close(h.exit) })
	return nil
}

func (h *fakeHandover) WaitForParent(ctx context.Context) error {
	select {
	case <-h.parentEnded:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (h *fakeHandover) Stop() {
	h.mu.Lock()
	h.stops++
	h.mu.Unlock()
	h.exitOnce.Do(func() { close(h.exit) })
}

func (h *fakeHandover) Exit() <-chan struct{} { return h.exit }

func (h *fakeHandover) counts() (readies, stops, upgrades int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.readies, h.stops, h.upgrades
}

// newFakeUpgrader runs New on h. With h.parent, the process is a new
// generation: the previous one's state must be in h.files.
func newFakeUpgrader(t *testing.T, opts Options, h *fakeHandover) (*Upgrader, error) {
	t.Helper()
	if h.parent {
		t.Setenv(handover.ParentEnv, "1")
	}
	if opts.Logger == nil {
		opts.Logger = discardLogger()
	}
	u, err := newUpgrader(opts, func(o tableflip.Options, hasParent bool) (handover.Handover, error) {
		if hasParent != h.parent {
			t.Errorf("the handover started with hasParent %v, want %v", hasParent, h.parent)
		}
		h.opts = o
		return h, nil
	})
	if u != nil {
		t.Cleanup(u.sigs.stop)
	}
	return u, err
}

// asNewGeneration makes h the handover of the generation after gen, whose
// parent (pid ppid) wrote the state file.
func asNewGeneration(t *testing.T, h *fakeHandover, gen, ppid int) {
	t.Helper()
	sf, err := newStateFile()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sf.f.Close() })
	if err := sf.write(genState{Generation: gen, PID: ppid, Version: "v-old", FirstStart: time.Unix(1e9, 0)}); err != nil {
		t.Fatal(err)
	}
	h.parent = true
	h.files[stateName] = sf.f
}
