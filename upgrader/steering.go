package upgrader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gohandoff/handoff/internal/proc"
	"github.com/gohandoff/handoff/internal/steer"
	"github.com/gohandoff/handoff/internal/supervise"
)

// Kernel steering (Options.KernelSteering): each worker process gets
// sockets of its own, one per address, in one SO_REUSEPORT group per
// address that the master creates and keeps, and the master decides in the
// kernel, with a classic BPF program on the group (internal/steer), which
// socket gets each new connection: only those of ready workers of the
// serving generation. A worker that is starting, or one being retired,
// gets none; a new generation's workers get none until the generation is
// ready, so a failed upgrade takes nothing with it even when the program
// accepts at once. A retiring worker is signalled only once the kernel
// says it holds no connection: its socket's accept queue is empty and it
// has no connection open on the service's ports. Workers need not
// cooperate: an unmodified program gets zero lost requests.
//
// The index a program returns is a socket's position in the group, which
// changes when a socket leaves it (the kernel moves the last one into its
// place). So no socket leaves while the service runs: the master keeps a
// descriptor of every socket it created and passes them all to the next
// generation (tableflip's registry, under steerName), which reuses those
// no previous worker holds any more. A worker's socket set is its index:
// set j is socket j of every group.

// steerHeldEnv tells a new generation which socket sets the previous
// one's workers hold ("1,4,5"), and those that older generations, still
// draining beside it, hold ("2@1234": set 2, held by master pid 1234): it
// must not hand them to its own workers before the generation that holds
// each has exited (overlap.go).
const steerHeldEnv = "HANDOFF_STEER_HELD_R4Y8"

// Retiring a worker: how often the master asks the kernel, and how long
// the worker must have been idle. The settle time covers a handshake that
// began before the program left the worker's socket out: its connection
// lands in that socket's queue once the client's ACK arrives, one round
// trip later.
const (
	retirePoll   = 10 * time.Millisecond
	retireSettle = 250 * time.Millisecond
)

// steerName names socket set j (j >= 1) of the socket passed as name in
// tableflip's registry; set 0 is the socket itself.
func steerName(name string, j int) string { return "handoff-steer:" + name + ":" + strconv.Itoa(j) }

// steering is the master's side of kernel steering. Guarded by procPool.mu.
type steering struct {
	groups []*steer.Group
	names  []string
	ports  []int
	owner  []*workerProc // by socket set; nil: free
	prev   map[int]int   // sets older generations' workers hold until they exit: set -> master pid
	// live: this generation's program is the group's (it serves); false
	// while a new generation starts, and after it took over.
	live    bool
	addFile func(name string, f *os.File) error
	log     *slog.Logger
	last    string // the targets last set, for the log
}

// newSteering sets kernel steering up for the sockets of u, or returns nil
// after one log line saying why it cannot: the workers then share each
// socket as without it.
func newSteering(u *Upgrader) *steering {
	st, err := setUpSteering(u)
	if err != nil {
		u.log.Warn("kernel steering off: every worker shares each socket and is signalled to drain at once, without waiting for its connections", "reason", err)
		return nil
	}
	u.log.Info("kernel steering on: each worker gets sockets of its own; new connections go to ready workers only", "sockets", st.groups[0].Len())
	return st
}

func setUpSteering(u *Upgrader) (*steering, error) {
	if runtime.GOOS != "linux" {
		return nil, errors.New("needs Linux (SO_ATTACH_REUSEPORT_CBPF)")
	}
	if u.opts.Probation > 0 {
		return nil, errors.New("not with --probation, whose restore does not pass on the socket groups")
	}
	if len(u.pcs) > 0 || len(u.socks) == 0 || len(u.socks) != len(u.lns) {
		return nil, errors.New("only TCP listeners can be steered")
	}
	if err := steer.Check(); err != nil {
		return nil, err
	}
	st := &steering{live: !u.HasParent(), addFile: u.tf.AddFile, log: u.log, prev: make(map[int]int)}
	for _, s := range u.socks {
		if !strings.HasPrefix(s.name, "tcp") {
			return nil, fmt.Errorf("socket %s is not TCP", s.name)
		}
	}
	for _, s := range u.socks {
		g, err := inheritGroup(u, s)
		if err != nil {
			st.close()
			return nil, err
		}
		if len(st.groups) > 0 && g.Len() != st.groups[0].Len() {
			g.Close()
			st.close()
			return nil, fmt.Errorf("socket %s: %d sockets in its group, %s has %d", s.name, g.Len(), st.names[0], st.groups[0].Len())
		}
		st.groups, st.names, st.ports = append(st.groups, g), append(st.names, s.name), append(st.ports, g.Port())
	}
	st.owner = make([]*workerProc, st.groups[0].Len())
	st.readHeld(os.Getenv(steerHeldEnv), u.ppid)
	os.Unsetenv(steerHeldEnv)
	return st, nil
}

// inheritGroup makes the steered group of socket s: s itself, then the
// sockets of its group the previous generation passed on.
func inheritGroup(u *Upgrader, s sockRef) (*steer.Group, error) {
	base, err := socketFile(s.conn, s.name)
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", s.name, err)
	}
	files := []*os.File{base}
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	for j := 1; ; j++ {
		f, err := u.tf.File(steerName(s.name, j))
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("inherit socket %d of %s: %w", j, s.name, err)
		}
		if f == nil {
			break
		}
		files = append(files, f)
	}
	g, err := steer.New(files)
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("socket %s: %w", s.name, err)
	}
	return g, nil
}

// readHeld reads which socket sets the previous generations' workers
// hold (steerHeldEnv, "set" or "set@pid" for an older generation's
// worker than ppid's).
func (st *steering) readHeld(held string, ppid int) {
	if held == "" {
		return
	}
	for _, s := range strings.Split(held, ",") {
		set, holder, older := strings.Cut(s, "@")
		pid := ppid
		if older {
			pid, _ = strconv.Atoi(holder)
		}
		if j, err := strconv.Atoi(set); err == nil && pid > 0 {
			st.prev[j] = pid
		}
	}
}

func (st *steering) close() {
	for _, g := range st.groups {
		g.Close()
	}
}

// acquireLocked gives p a socket set: keep if it is free (the set of the
// slot's last worker, whose queue its replacement serves), else a free
// one, those with connections queued first, else a new one.
// Sets kept for other slots' respawns are not free.
func (st *steering) acquireLocked(p *workerProc, keep int, kept []int) ([]*os.File, error) {
	j := -1
	if keep >= 0 && keep < len(st.owner) && st.owner[keep] == nil {
		j = keep
	}
	free := func(i int) bool {
		_, held := st.prev[i]
		return st.owner[i] == nil && !held && !slices.Contains(kept, i)
	}
	for i := range st.owner {
		if j < 0 && free(i) && st.queued(i) > 0 {
			j = i
		}
	}
	for i := range st.owner {
		if j < 0 && free(i) {
			j = i
		}
	}
	if j < 0 {
		var err error
		if j, err = st.addLocked(); err != nil {
			return nil, err
		}
	}
	st.owner[j] = p
	p.set = j
	files := make([]*os.File, len(st.groups))
	for i, g := range st.groups {
		files[i] = g.File(j)
	}
	return files, nil
}

// addLocked creates socket set len(owner) in every group and registers
// it for the next generation.
func (st *steering) addLocked() (int, error) {
	j := len(st.owner)
	for i, g := range st.groups {
		k, f, err := g.Add()
		if err != nil {
			return 0, fmt.Errorf("upgrader: new socket for a worker: %w", err)
		}
		if k != j {
			return 0, fmt.Errorf("upgrader: socket group of %s out of step: socket %d, want %d", st.names[i], k, j)
		}
		if err := st.addFile(steerName(st.names[i], j), f); err != nil {
			return 0, fmt.Errorf("upgrader: pass on socket %d of %s: %w", j, st.names[i], err)
		}
	}
	st.owner = append(st.owner, nil)
	return j, nil
}

// releaseLocked frees p's socket set once p has exited, and says if
// connections were left in its queue (they wait for the set's next
// worker).
func (st *steering) releaseLocked(p *workerProc) {
	if p.set < 0 || p.set >= len(st.owner) || st.owner[p.set] != p {
		return
	}
	st.owner[p.set] = nil
	if q := st.queued(p.set); q > 0 && p.state == supervise.Draining {
		st.log.Warn("connections left in a retired worker's socket: they wait for the next worker on it", "worker", p.id, "worker_pid", p.pid, "socket", p.set, "queued", q)
	}
}

func (st *steering) queued(j int) int {
	n := 0
	for _, g := range st.groups {
		q, err := g.Queued(j)
		if err == nil {
			n += q
		}
	}
	return n
}

// steerLocked points the program at the sets of the ready workers in
// procs; with none, at those starting, else at the sets kept for a
// respawn, else at set 0: connections then wait in a queue that a worker
// will serve, never in one nobody will.
func (st *steering) steerLocked(procs map[*workerProc]struct{}, kept []int) {
	if !st.live {
		return
	}
	var ready, starting []int
	for p := range procs {
		if p.set < 0 {
			continue
		}
		switch p.state {
		case supervise.Ready:
			ready = append(ready, p.set)
		case supervise.Starting:
			starting = append(starting, p.set)
		}
	}
	targets := ready
	if len(targets) == 0 {
		targets = starting
	}
	if len(targets) == 0 {
		targets = kept
	}
	slices.Sort(targets)
	targets = slices.Compact(targets)
	desc := fmt.Sprint(targets)
	if desc == st.last {
		return
	}
	for i, g := range st.groups {
		if err := g.Steer(targets); err != nil {
			st.log.Error("cannot steer new connections", "socket", st.names[i], "targets", desc, "err", err)
			return
		}
	}
	st.last = desc
	st.log.Debug("steering new connections", "sockets", desc)
}

// heldLocked lists the sets held by live workers and kept for respawns,
// for the next generation.
func (st *steering) heldLocked(kept []int) string {
	var held []string
	for j, p := range st.owner {
		if p != nil || slices.Contains(kept, j) {
			held = append(held, strconv.Itoa(j))
		}
	}
	for _, j := range slices.Sorted(maps.Keys(st.prev)) {
		if pid := st.prev[j]; proc.Alive(pid) && st.owner[j] == nil && !slices.Contains(kept, j) {
			held = append(held, fmt.Sprintf("%d@%d", j, pid))
		}
	}
	return strings.Join(held, ",")
}

// idle reports whether the kernel says worker p holds no connection: its
// sockets' queues are empty and it has none open on the service's ports.
func (st *steering) idle(p *workerProc) (bool, int) {
	if q := st.queued(p.set); q > 0 {
		return false, q
	}
	n, err := steer.Held(p.pid, st.ports)
	if err != nil {
		// The process has gone, or /proc cannot be read: nothing to
		// wait for that the kernel can tell.
		return true, 0
	}
	return n == 0, n
}

// waitIdle waits until p has been idle for retireSettle, or has exited
// (idle), or ctx is done (not idle); it returns how many connections p
// held at the last look.
func (st *steering) waitIdle(ctx context.Context, p *workerProc) (held int, idle bool) {
	t := time.NewTicker(retirePoll)
	defer t.Stop()
	var since time.Time
	for {
		ok, n := st.idle(p)
		switch {
		case !ok:
			since = time.Time{}
		case since.IsZero():
			since = time.Now()
		case time.Since(since) >= retireSettle:
			return 0, true
		}
		select {
		case <-p.exited:
			return 0, true
		case <-ctx.Done():
			return n, false
		case <-t.C:
		}
	}
}
