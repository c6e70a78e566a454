package upgrader

import (
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/gohandoff/handoff/internal/connpass"
)

// Where a draining HTTPServer finds the next generation's receivers: in
// goroutine mode in the state file, in process mode among the abstract
// addresses of the worker processes (see httppass.go).

// connTarget is a receiver of the next generation, and its process.
type connTarget struct {
	addr string
	pid  int
}

// serverKey names the set of sockets a server serves, the same in every
// generation: a hash of their addresses.
func serverKey(lns []net.Listener) string {
	addrs := make([]string, len(lns))
	for i, ln := range lns {
		addrs[i] = ln.Addr().Network() + ":" + ln.Addr().String()
	}
	slices.Sort(addrs)
	h := fnv.New32a()
	for _, a := range addrs {
		h.Write([]byte(a))
		h.Write([]byte{0})
	}
	return fmt.Sprintf("%08x", h.Sum32())
}

// publishConns records where this generation's server for key receives
// connections; the state file tells it with the ready.
func (u *Upgrader) publishConns(key, addr string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.connsAddrs == nil {
		u.connsAddrs = make(map[string]string)
	}
	u.connsAddrs[key] = addr
}

// successorConns returns where the serving generation receives
// connections, if that is another generation than this one.
func (u *Upgrader) successorConns(key string) []connTarget {
	if u.state == nil {
		return nil
	}
	st, err := u.state.read()
	if err != nil || st.PID == os.Getpid() || st.Conns[key] == "" {
		return nil
	}
	return []connTarget{{addr: st.Conns[key], pid: st.PID}}
}

// connsPrefix begins the addresses the worker processes of this service
// receive connections on, "" where connections do not move.
func (u *Upgrader) connsPrefix() string {
	if !connpass.Supported || u.state == nil {
		return ""
	}
	id := u.state.id()
	if id == "" {
		return ""
	}
	return "@handoff-conns-" + id
}

// workerConnPassing is a worker process's link to its generation's
// passing: it receives on PREFIX-kKEY-gGEN-PID and, at its drain, hands its
// connections in turn to the workers of the oldest newer generation still
// there: the next one, which is ready, since this one drains; once that
// one has ended its own drain, the one after it.
func (u *Upgrader) workerConnPassing() *connPassing {
	prefix := u.worker.conns
	if prefix == "" || !connpass.Supported {
		return nil
	}
	return &connPassing{
		addr: func(key string) string { return fmt.Sprintf("%s-k%s-g%d-%d", prefix, key, u.gen, os.Getpid()) },
		successor: func(key string) []connTarget {
			prefix := prefix + "-k" + key
			addrs, err := connpass.Lookup(prefix + "-g")
			if err != nil {
				u.log.Warn("cannot find the new generation's workers to hand connections over to", "err", err)
				return nil
			}
			byGen := make(map[int][]connTarget)
			oldest := 0
			for _, a := range addrs {
				genS, pidS, _ := strings.Cut(strings.TrimPrefix(a, prefix+"-g"), "-")
				gen, err1 := strconv.Atoi(genS)
				pid, err2 := strconv.Atoi(pidS)
				if err1 != nil || err2 != nil || gen <= u.gen {
					continue
				}
				byGen[gen] = append(byGen[gen], connTarget{addr: a, pid: pid})
				if oldest == 0 || gen < oldest {
					oldest = gen
				}
			}
			return byGen[oldest]
		},
	}
}
