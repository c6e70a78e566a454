//go:build integration

package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gohandoff/handoff/internal/load"
)

// TestRealSystemdAnsibleRollout runs examples/ansible/rollout.yml with a
// real ansible-playbook against three instances of the shipped
// hello@.service under a real systemd, each as a host of the inventory,
// under load. The release is good for the first, not for the second,
// whose reload fails: the rollout must stop there (ansible-playbook fails,
// the third is never touched), the second must have its previous build
// back on disk, and every instance serves throughout without a failed
// request.
func TestRealSystemdAnsibleRollout(t *testing.T) {
	if _, err := exec.LookPath("ansible-playbook"); err != nil {
		t.Skip("ansible-playbook missing (apt-get install ansible)")
	}
	sd := bootSystemd(t)
	srv := filepath.Join(sd.root, "srv")
	bad := filepath.Join(sd.root, "bad-build")
	installBytes(t, []byte("#!/bin/sh\necho 'bad build: config missing' >&2\nexit 1\n"), bad)

	names := []string{"a", "b", "c"}
	addrs := map[string]string{}
	inv := "hello:\n  vars:\n    ansible_connection: local\n    ansible_python_interpreter: /usr/bin/python3\n" +
		"    release: " + helloV2Copy(t, sd) + "\n  hosts:\n"
	for _, n := range names {
		dir := filepath.Join(srv, n)
		if err := os.MkdirAll(filepath.Join(dir, "deploy", "current"), 0o755); err != nil {
			t.Fatal(err)
		}
		install(t, helloV1, filepath.Join(dir, "deploy", "current", "hello"))
		install(t, handoffBin, filepath.Join(dir, "deploy", "current", "handoff"))
		addrs[n] = freeAddr(t)
		if err := os.WriteFile(filepath.Join(dir, "env"), []byte("LISTEN="+addrs[n]+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		inv += fmt.Sprintf("    %s:\n      hello_unit: hello@%s.service\n      hello_root: %s\n", n, n, dir)
		if n == "b" {
			inv += "      release: " + bad + "\n"
		}
	}
	invPath := filepath.Join(sd.root, "inventory.yml")
	if err := os.WriteFile(invPath, []byte(inv), 0o644); err != nil {
		t.Fatal(err)
	}
	a := &sdApp{t: t, sd: sd, dir: srv}
	unit := a.shipped("hello@.service", "/srv/hello", srv)
	sd.installUnit("hello@.service", unit)
	for _, n := range names {
		sd.must("systemctl", "start", "hello@"+n)
		t.Cleanup(func() {
			if t.Failed() {
				out, _ := sd.run("journalctl", "--no-pager", "-n", "40", "-u", "hello@"+n)
				t.Logf("journal of hello@%s:\n%s", n, out)
			}
			sd.run("systemctl", "stop", "hello@"+n)
		})
	}

	// 10 clients on each instance through the rollout.
	done := make(chan struct{})
	results := map[string]<-chan load.Result{}
	counts := map[string]*atomic.Int64{}
	for _, n := range names {
		count, ch := new(atomic.Int64), make(chan load.Result, 1)
		counts[n], results[n] = count, ch
		cfg := load.Config{Addr: addrs[n], Concurrency: 10, Requests: 200, Until: done,
			MaxDuration: time.Until(deadline(t)), PostEvery: 2, Completed: count}
		go func() { ch <- load.Run(context.Background(), cfg) }()
	}
	for _, n := range names {
		waitCount(t, counts[n], 100)
	}

	home := filepath.Join(sd.root, "ansible-home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	playbook, err := filepath.Abs("../examples/ansible/rollout.yml")
	if err != nil {
		t.Fatal(err)
	}
	// The playbook lives in the worktree, not under the test's folder:
	// copy it where the namespace sees it.
	pb := filepath.Join(sd.root, "rollout.yml")
	install(t, playbook, pb)
	out, err := sd.run("env", "HOME="+home, "ANSIBLE_LOCAL_TEMP="+filepath.Join(home, "tmp"),
		"ANSIBLE_REMOTE_TEMP="+filepath.Join(home, "tmp"), "ANSIBLE_NOCOLOR=1", "ANSIBLE_PIPELINING=1", "ANSIBLE_RETRY_FILES_ENABLED=0",
		"ansible-playbook", "-i", invPath, pb)
	close(done)
	for _, n := range names {
		res := <-results[n]
		t.Logf("hello@%s: %s", n, res)
		if res.Failed != 0 || res.OK != res.Requests {
			t.Errorf("hello@%s: %d of %d requests failed: %v %q", n, res.Failed, res.Requests, res.ByKind, res.Errors)
		}
	}
	ee, isExit := err.(*exec.ExitError)
	if !isExit || ee.ExitCode() == 0 {
		t.Fatalf("ansible-playbook: %v, want it to fail at host c\n%s", err, out)
	}
	t.Logf("ansible-playbook exit %d", ee.ExitCode())
	if !strings.Contains(out, "rollout stopped") || !strings.Contains(out, "bad build: config missing") {
		t.Errorf("ansible-playbook's output does not say where and why the rollout stopped:\n%s", out)
	}
	if strings.Contains(out, "ok: [c]") || strings.Contains(out, "changed: [c]") {
		t.Errorf("the rollout went on past the failed host to c:\n%s", out)
	}

	want := map[string]string{"a": "generation=2 version=v2", "b": "generation=1 version=v1", "c": "generation=1 version=v1"}
	for _, n := range names {
		s := &service{t: t, addr: addrs[n]}
		if code, body, err := s.get("/healthz"); err != nil || code != 200 || !strings.Contains(body, want[n]) {
			t.Errorf("hello@%s: GET /healthz = %d %q %v, want %s", n, code, body, err, want[n])
		}
	}
	v1, _ := os.ReadFile(helloV1)
	for _, n := range []string{"b", "c"} {
		got, _ := os.ReadFile(filepath.Join(srv, n, "deploy", "current", "hello"))
		if !bytes.Equal(got, v1) {
			t.Errorf("hello@%s: deploy/current/hello is not the v1 build it serves (%d bytes)", n, len(got))
		}
	}
	if t.Failed() {
		t.Logf("ansible-playbook output:\n%s", out)
	}
}

// helloV2Copy puts hello v2 where the namespace sees it, as the release.
func helloV2Copy(t *testing.T, sd *realSystemd) string {
	p := filepath.Join(sd.root, "release-v2", "hello")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	install(t, helloV2, p)
	return p
}
