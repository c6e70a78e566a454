//go:build integration

package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A real systemd, Debian's, booted as pid 1 of a private pid, mount, UTS
// and cgroup namespace, driven with systemctl and journalctl through
// nsenter. The network namespace is the host's, so that the test loads the
// services on 127.0.0.1 from outside.
//
// Nothing it does may reach the host:
//   - /run, /tmp, /var/tmp and /var/log/journal are fresh tmpfs; journald
//     keeps its journal in memory (Storage=volatile);
//   - /etc/systemd/system is a folder of the test (host-enabled units are
//     not seen), the static .wants folders of /usr/lib/systemd/system and
//     the generators are hidden, and the systemd-tmpfiles units are masked
//     (its --remove once emptied the host's /tmp), so that sysinit.target
//     and basic.target, which the shipped units pull in, start nothing;
//   - systemd boots to sdTarget, which wants nothing, with container= set;
//   - it runs in a cgroup of its own, the root of its cgroup namespace,
//     removed at the end;
//   - the namespace is powered off at the end of the test, and killed if
//     that fails or the test fails early.
//
// The test's own folder is mounted at the same path inside, so the paths
// in unit files and on the test's side are the same; it lives under the
// host's /tmp, which the namespace covers with a fresh tmpfs.
type realSystemd struct {
	t    *testing.T
	root string // the test's folder, seen at the same path inside
	pid  int    // host pid of the namespace's pid 1 (systemd)
	cmd  *exec.Cmd
	cg   string // the cgroup made for it, host path
	done chan struct{}
}

const sdTarget = "handoff-test.target"

// bootScript runs as pid 1 of the new namespaces and execs systemd. $1 is
// the test's folder, $2 the name of the cgroup to make.
const bootScript = `set -eu
root=$1 cg=$2
mount -t tmpfs -o mode=755 tmpfs /run
mkdir /run/keep
mount --bind "$root" /run/keep
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
mkdir -p "$root"
mount --move /run/keep "$root"
rmdir /run/keep
mount --bind "$root/units" /etc/systemd/system
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
for d in /usr/lib/systemd/system/*.wants /usr/lib/systemd/system/*.requires \
	/usr/lib/systemd/system-generators /usr/local/lib/systemd/system-generators \
	/etc/systemd/system-generators /usr/lib/systemd/system-environment-generators; do
	if [ -d "$d" ]; then mount -t tmpfs -o ro,mode=755 tmpfs "$d"; fi
done
mkdir -p /run/systemd/journald.conf.d
printf '[Journal]\nStorage=volatile\nReadKMsg=no\nForwardToSyslog=no\nForwardToWall=no\n' >/run/systemd/journald.conf.d/handoff-test.conf
umount -R /sys/fs/cgroup
mount -t cgroup2 none /sys/fs/cgroup
mkdir "/sys/fs/cgroup/$cg"
echo $$ >"/sys/fs/cgroup/$cg/cgroup.procs"
umount /sys/fs/cgroup
exec unshare --cgroup sh -c 'mount -t cgroup2 none /sys/fs/cgroup && exec env container=handoff-test /lib/systemd/systemd --system --unit=` + sdTarget + `'
`

// bootSystemd boots a systemd for t and its subtests; it is powered off
// when t ends. It skips t where the namespaces cannot be made.
func bootSystemd(t *testing.T) *realSystemd {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("real systemd: needs root to make namespaces")
	}
	for _, p := range []string{"/lib/systemd/systemd", "/usr/bin/unshare", "/usr/bin/nsenter", "/usr/bin/systemctl"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("real systemd: %s missing (apt-get install systemd util-linux)", p)
		}
	}
	if out, err := exec.Command("unshare", "--fork", "--pid", "--mount", "--uts", "--cgroup", "--mount-proc", "--propagation", "private", "true").CombinedOutput(); err != nil {
		t.Skipf("real systemd: namespaces cannot be made here: unshare: %v %s", err, bytes.TrimSpace(out))
	}
	hostCg, err := unifiedMount()
	if err != nil {
		t.Skipf("real systemd: %v", err)
	}
	probe := filepath.Join(hostCg, fmt.Sprintf("handoff-test-probe-%d", os.Getpid()))
	if err := os.Mkdir(probe, 0o755); err != nil {
		t.Skipf("real systemd: cannot make a cgroup for it: %v", err)
	}
	unix.Rmdir(probe)

	root := t.TempDir()
	units := filepath.Join(root, "units")
	if err := os.Mkdir(units, 0o755); err != nil {
		t.Fatal(err)
	}
	target := "[Unit]\nDescription=handoff test: journald and what the test starts\n" +
		"Wants=systemd-journald.socket systemd-journald.service\nAfter=systemd-journald.socket systemd-journald.service\n"
	if err := os.WriteFile(filepath.Join(units, sdTarget), []byte(target), 0o644); err != nil {
		t.Fatal(err)
	}
	masked, _ := filepath.Glob("/usr/lib/systemd/system/systemd-tmpfiles*")
	for _, m := range masked {
		if err := os.Symlink("/dev/null", filepath.Join(units, filepath.Base(m))); err != nil {
			t.Fatal(err)
		}
	}

	// systemd, pid 1 in a container, says READY=1 on $NOTIFY_SOCKET once
	// it has reached its unit.
	notifyPath := filepath.Join(root, "boot-notify.sock")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()

	cgName := fmt.Sprintf("handoff-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	sd := &realSystemd{t: t, root: root, cg: filepath.Join(hostCg, cgName), done: make(chan struct{})}
	logf, err := os.Create(filepath.Join(root, "systemd.log"))
	if err != nil {
		t.Fatal(err)
	}
	sd.cmd = exec.Command("unshare", "--fork", "--pid", "--mount", "--uts", "--mount-proc", "--propagation", "private",
		"--kill-child", "sh", "-c", bootScript, "boot", root, cgName)
	sd.cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "NOTIFY_SOCKET=" + notifyPath}
	sd.cmd.Stdout, sd.cmd.Stderr = logf, logf
	sd.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := sd.cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("real systemd: start unshare: %v", err)
	}
	logf.Close()
	go func() { sd.cmd.Wait(); close(sd.done) }()
	t.Cleanup(sd.shutdown)

	// READY=1, or the namespace's end.
	got := make(chan error, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			notify.SetReadDeadline(deadline(t))
			n, err := notify.Read(buf)
			if err != nil {
				got <- err
				return
			}
			if bytes.Contains(buf[:n], []byte("READY=1")) {
				got <- nil
				return
			}
		}
	}()
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("real systemd: no READY=1 from systemd: %v; its output:\n%s", err, sd.output())
		}
	case <-sd.done:
		t.Fatalf("real systemd: the namespace exited during boot: %v; its output:\n%s", sd.cmd.ProcessState, sd.output())
	}
	kids, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", sd.cmd.Process.Pid, sd.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("real systemd: find pid 1: %v", err)
	}
	f := strings.Fields(string(kids))
	if len(f) != 1 {
		t.Fatalf("real systemd: unshare has children %q, want one", kids)
	}
	sd.pid, _ = strconv.Atoi(f[0])
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", sd.pid)); strings.TrimSpace(string(comm)) != "systemd" {
		t.Fatalf("real systemd: pid 1 of the namespace is %q, want systemd", comm)
	}
	return sd
}

// unifiedMount finds where the host mounts the cgroup2 hierarchy.
func unifiedMount() (string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		for i, x := range f {
			if x == "-" && i+1 < len(f) && f[i+1] == "cgroup2" {
				return f[4], nil
			}
		}
	}
	return "", fmt.Errorf("no cgroup2 hierarchy mounted on the host")
}

func (sd *realSystemd) output() string {
	b, _ := os.ReadFile(filepath.Join(sd.root, "systemd.log"))
	return lastLines(string(b), 40)
}

// shutdown powers the namespace off, and kills it if it is not gone in
// time; then removes its cgroup.
func (sd *realSystemd) shutdown() {
	t := sd.t
	if t.Failed() && sd.pid > 0 {
		out, _ := sd.run("journalctl", "--no-pager", "-n", "150", "-o", "short-monotonic")
		t.Logf("journal of the real systemd (last lines):\n%s", out)
	}
	select {
	case <-sd.done:
	default:
		if sd.pid > 0 {
			sd.run("systemctl", "--no-block", "poweroff")
		}
		select {
		case <-sd.done:
		case <-time.After(20 * time.Second):
			t.Errorf("real systemd: not powered off in 20s; killing the namespace")
			syscall.Kill(sd.pid, syscall.SIGKILL)
			sd.cmd.Process.Kill()
			<-sd.done
		}
	}
	sd.removeCgroup()
}

// removeCgroup removes the namespace's cgroup, deepest first, once the
// kernel reports it empty (the namespace's processes may still be exiting).
func (sd *realSystemd) removeCgroup() {
	end := time.Now().Add(10 * time.Second)
	for {
		ev, err := os.ReadFile(filepath.Join(sd.cg, "cgroup.events"))
		if err != nil || strings.Contains(string(ev), "populated 0") || time.Now().After(end) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	var dirs []string
	filepath.WalkDir(sd.cg, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := unix.Rmdir(dirs[i]); err != nil {
			sd.t.Errorf("real systemd: remove cgroup %s: %v", dirs[i], err)
		}
	}
}

// run runs a command inside the namespace and returns its output
// (stdout and stderr) and error.
func (sd *realSystemd) run(args ...string) (string, error) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline(sd.t))
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(sd.pid), "-m", "-p", "-u", "-C", "--"}, args...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "LANG=C.UTF-8"}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// must runs a command inside and fails the test if it fails.
func (sd *realSystemd) must(args ...string) string {
	sd.t.Helper()
	out, err := sd.run(args...)
	if err != nil {
		sd.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// systemctl runs systemctl with args inside and returns its exit code and
// output.
func (sd *realSystemd) systemctl(args ...string) (int, string) {
	out, err := sd.run(append([]string{"systemctl"}, args...)...)
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out
	} else if err != nil {
		sd.t.Fatalf("systemctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return 0, out
}

// show returns the unit's properties.
func (sd *realSystemd) show(unit string, props ...string) map[string]string {
	sd.t.Helper()
	out := sd.must("systemctl", "show", unit, "-p", strings.Join(props, ","))
	m := map[string]string{}
	for line := range strings.SplitSeq(out, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

// installUnit writes a unit file and reloads systemd.
func (sd *realSystemd) installUnit(name, text string) {
	sd.t.Helper()
	if err := os.WriteFile(filepath.Join(sd.root, "units", name), []byte(text), 0o644); err != nil {
		sd.t.Fatal(err)
	}
	sd.must("systemctl", "daemon-reload")
}

// removeUnit stops a unit, forgets its failures and removes its file.
func (sd *realSystemd) removeUnit(name string) {
	sd.run("systemctl", "stop", name)
	sd.run("systemctl", "reset-failed", name)
	os.Remove(filepath.Join(sd.root, "units", name))
	sd.run("systemctl", "daemon-reload")
}

// waitUnit waits until the unit's properties have the values in want, as
// systemctl show reads them, and returns them. It polls: the changes it
// waits for (a restart systemd schedules itself) end no command the test
// could wait on. Bounded by the test's deadline.
func (sd *realSystemd) waitUnit(unit string, want map[string]string) map[string]string {
	sd.t.Helper()
	props := make([]string, 0, len(want))
	for k := range want {
		props = append(props, k)
	}
	end := deadline(sd.t)
	backoff := 10 * time.Millisecond
	for {
		got := sd.show(unit, props...)
		ok := true
		for k, v := range want {
			if got[k] != v {
				ok = false
			}
		}
		if ok {
			return got
		}
		if time.Now().After(end) {
			sd.t.Fatalf("unit %s: %v, want %v", unit, got, want)
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, 200*time.Millisecond)
	}
}

// journalEntry is one line of the journal, as journalctl -o json gives it.
type journalEntry struct {
	Message string `json:"MESSAGE"`
	PID     string `json:"_PID"`
	Unit    string `json:"_SYSTEMD_UNIT"`
	Comm    string `json:"_COMM"`
}

// journal returns the lines the service unit logged since the boot
// (systemd's own lines about the unit included).
func (sd *realSystemd) journal(unit string) []journalEntry {
	sd.t.Helper()
	out := sd.must("journalctl", "--no-pager", "-o", "json", "-u", unit)
	var es []journalEntry
	for line := range strings.SplitSeq(out, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var e journalEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			// MESSAGE as a byte array (not UTF-8): skip it.
			continue
		}
		es = append(es, e)
	}
	return es
}
