// Package upgrader replaces a running network server with a new build of
// itself without losing a connection or a request, and keeps the old build
// serving when the new one fails.
//
// It is built on github.com/cloudflare/tableflip, which passes listening
// sockets from a process to its successor and waits for the successor to
// say it is ready, and on github.com/oklog/run for the process lifecycle.
//
// # Generations
//
// A service embeds one Upgrader. Its first process is generation 1. An
// upgrade (SIGHUP, the handoff CLI's reload, or Upgrader.Upgrade) starts
// the executable at the process's own path, which a deploy may have
// replaced, as generation 2: it inherits the very same listening sockets,
// so connections waiting in the kernel's accept queue are never refused or
// lost. Once every worker of the new generation serves, it writes the PID
// file and tells the old generation, which stops accepting, finishes the
// work it accepted (the drain) and exits.
//
//	upg, err := upgrader.New(upgrader.Options{PIDFile: "run/app.pid"})
//	if err != nil { ... }
//	defer upg.Stop()
//	if _, err := upg.Listen("tcp", "127.0.0.1:8080"); err != nil { ... }
//	srv := &upgrader.HTTPServer{Server: &http.Server{Handler: mux}}
//	err = upg.Serve(context.Background(), srv.Worker)
//
// See the examples for an HTTP server, a TCP server and a UDP service.
//
// # Guarantees
//
//   - A connection the kernel accepted is served: the sockets are shared
//     across generations and never closed while an upgrade runs.
//   - A datagram the kernel queued is read by one generation or the next:
//     a draining generation stops reading its packet conns by a read
//     deadline and answers what it read before they are closed (see
//     WorkerFunc).
//   - A unix socket file stays the same one through every upgrade, failed
//     or not, and the last generation removes it when it stops; a stale
//     one is taken over at start, a live one refused (unixsock.go).
//   - With HTTPServer, no request is dropped by a drain, keep-alive clients
//     included: see HTTPServer for how (net/http's Shutdown alone drops
//     requests read after it began).
//   - A bad build never takes the service down: if the new generation
//     exits, or is not ready within Options.UpgradeTimeout, it is killed and
//     the old generation goes on serving; the caller of the upgrade gets the
//     reason (exit status, timeout, exec error).
//   - One upgrade at a time, and none while the previous generation still
//     drains: the next one waits for it to exit.
//   - A drain lasts at most Options.DrainTimeout; what is still open then is
//     cut, and counted in the logs and metrics.
//
// # A build that crashes after ready
//
// With worker processes, a new generation whose workers fall into a crash
// loop within RollbackWindow of its ready runs the previous build's workers
// again: the master kept that build's executable open (rollback.go). With
// Options.Probation, the previous generation, once drained, stands by
// holding copies of the sockets; if the new generation dies meanwhile
// without having been asked to stop, it starts its own build again on them
// (probation.go). Under systemd it stays the main process until then.
//
// # Stopping
//
// SIGTERM and SIGINT stop the service gracefully, with the same drain; a
// second signal, a second or more after the first (StopSignalGrace), cuts
// the drain short. A generation still draining after an
// upgrade takes its first stop signal as the stop it is already doing, so
// that signalling every process of the service at once (a terminal's
// Ctrl-C, systemd's default KillMode=control-group) drains them all.
//
// # systemd
//
// Under systemd, run the service with Type=notify and NotifyAccess=all. The
// upgrader speaks the sd_notify protocol (through coreos/go-systemd):
//
//   - READY=1 when the first generation is ready;
//   - on an upgrade, the old generation sends RELOADING=1 with
//     MONOTONIC_USEC; once the new one is ready, the old one sends
//     MAINPID=<new pid> and then the new one READY=1 (NotifyAccess=all lets
//     systemd accept it from the new process); systemd thus follows the new
//     main process without reading a PID file;
//   - if the upgrade fails, the old generation sends READY=1 with a STATUS=
//     that says why, and goes on serving;
//   - on a stop, STOPPING=1 and EXTEND_TIMEOUT_USEC= covering the drain, then
//     again every second with the drain's progress in STATUS=.
//
// Use ExecReload=handoff reload --no-follow --pidfile ... so that systemctl
// reload waits for the new generation and fails when the upgrade fails, and
// ExecStop=-handoff stop --pidfile ... so that systemctl stop drains: a
// generation started by an upgrade is not systemd's child, and systemd
// does not wait for such a main process after SIGTERM but sends SIGKILL at
// once (unless other processes of the unit, such as worker processes, got
// the SIGTERM too); it does wait for ExecStop=. Type=notify-reload (systemd
// 253+, untested) would send SIGHUP and wait for READY=1, but systemd
// cannot be told that a reload failed that way: the old generation's
// READY=1 ends the reload either way. Without Type=notify, PIDFile= with the same
// ExecReload= works: systemd re-reads the PID file when ExecReload= ends,
// and handoff reload ends once the new generation has written it. The
// project's examples/systemd holds unit files for both ways and a .socket
// unit.
//
// NOTIFY_SOCKET stays in the environment of every generation, since the next
// one must report to systemd too. Processes the application starts should
// be given ChildEnviron as their environment, so that a child that speaks
// sd_notify does not report as if it were the service.
//
// Socket activation: when systemd passes sockets (LISTEN_FDS, LISTEN_PID,
// LISTEN_FDNAMES), the first generation adopts them instead of binding:
// Listen and ListenPacket take the passed socket bound to the asked
// address, or the one named by FileDescriptorName= with an address of the
// form "systemd:NAME" (SystemdPrefix). The LISTEN_* variables are removed
// once read; later generations inherit the sockets from their parent.
// Passed sockets that no Listen takes are closed when the generation is
// ready. A unix socket that systemd owns is never removed from the file
// system.
//
// # Metrics, logs and the control socket
//
// Stats returns a snapshot for integrations: the serving generation,
// upgrades by result, upgrade and drain durations, connections cut at the
// drain timeout, workers by state and worker restarts. Counters and
// histograms count since the service's first start: each generation passes
// them on to the next. Package upgrader/promhandoff exports them to
// Prometheus as the handoff_* series; serve them with ServeAdmin, whose
// listener survives upgrades like the service's, so a scrape never fails
// during one. Package upgrader/watch upgrades on file changes
// (Options.Watch). Neither is imported here: a program pays for
// Prometheus or fsnotify only if it imports them.
//
// Every line the upgrader logs, through Options.Logger (log/slog), carries
// pid and generation; upgrade and drain lines carry their duration.
// Logger returns that logger for the application's own lines.
//
// With a PID file, the upgrader also listens on a control socket next to it
// (run/app.pid gives run/app.sock, mode 0600, only for the same user or
// root), through which the handoff CLI reloads, stops and inspects the
// service: handoff reload shows the steps live, the old generation's drain
// included.
//
// # Platforms
//
// Linux and macOS. On Windows the package builds, and a service runs and
// stops, but cannot upgrade (tableflip does not support it there).
package upgrader
