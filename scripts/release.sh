#!/bin/sh
# Releases for `make run`, `make deploy`, `make rollback` and `make releases`.
#
# deploy/releases/VERSION/ holds the binaries of a release; deploy/current is
# a symlink to the one in service. Every change of the link is atomic (a new
# link renamed over it), and after a failed reload the link points at the
# release that serves: the one the service's process was started from.
# Releases are ordered by when they were staged, newest first; a rollback
# goes to the release staged before the serving one, so repeated rollbacks
# walk back in time.
set -eu

DEPLOYDIR=${DEPLOYDIR:-deploy}
PIDFILE=${PIDFILE:-run/hello.pid}
KEEP=${KEEP:-5}
releases="$DEPLOYDIR/releases"

die() { echo "release: $*" >&2; exit 1; }

# swap TARGET: point current at releases/TARGET atomically. (mv -T is GNU
# coreutils': on macOS install them and use gmv.)
swap() {
	ln -sfn "releases/$1" "$DEPLOYDIR/.current.tmp.$$"
	mv -T "$DEPLOYDIR/.current.tmp.$$" "$DEPLOYDIR/current"
}

# linked: the release current points at.
linked() { readlink "$DEPLOYDIR/current" 2>/dev/null | sed 's|^releases/||'; }

# running_pid: the pid in the PID file, if that process lives.
running_pid() {
	pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# served: the release the running service was started from (Linux: its
# executable), or nothing when that cannot be told.
served() {
	pid=$(running_pid) || return 0
	exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 0
	exe=${exe% (deleted)}
	dir=$(dirname "$exe")
	[ -d "$releases" ] || return 0
	if [ "$(dirname "$dir")" = "$(cd "$releases" && pwd -P)" ]; then basename "$dir"; fi
}

# serving: the release in service: served, else linked.
serving() {
	s=$(served)
	if [ -n "$s" ]; then echo "$s"; else linked; fi
}

# ordered: the releases, newest first.
ordered() { ls -1t "$releases" 2>/dev/null | grep -v '\.tmp\.' || true; }

# older_than RELEASE: the release staged just before RELEASE.
older_than() { ordered | awk -v cur="$1" 'found { print; exit } $0 == cur { found = 1 }'; }

handoff() {
	h=${HANDOFF:-}
	if [ -z "$h" ]; then
		if [ -x bin/handoff ]; then h=bin/handoff; else h="$releases/$(serving)/handoff"; fi
	fi
	"$h" "$@"
}

# lock: one deploy, rollback or install at a time.
lock() {
	mkdir -p "$DEPLOYDIR"
	mkdir "$DEPLOYDIR/.lock" 2>/dev/null ||
		die "another deploy or rollback is running (remove $DEPLOYDIR/.lock if it is not)"
	trap 'rmdir "$DEPLOYDIR/.lock" 2>/dev/null' EXIT
	trap 'exit 130' INT TERM
}

# check_deploy VERSION: a service runs from a release, and VERSION is a
# valid name that is not the serving release.
check_deploy() {
	[ -n "$1" ] || die "empty VERSION"
	case "$1" in */*|.*|*.tmp.*) die "VERSION $1 must not contain / or .tmp. or start with a dot";; esac
	[ -L "$DEPLOYDIR/current" ] || die "no current release: start one with 'make run'"
	running_pid >/dev/null || die "no service running with pid file $PIDFILE: start one with 'make run'"
	[ "$1" != "$(serving)" ] || die "release $1 is the one serving: deploy another VERSION"
}

# stage VERSION: copy the freshly built binaries into their release folder.
stage() {
	[ -n "$1" ] || die "empty VERSION"
	case "$1" in */*|.*|*.tmp.*) die "VERSION $1 must not contain / or .tmp. or start with a dot";; esac
	mkdir -p "$releases/$1.tmp.$$"
	cp bin/hello bin/handoff "$releases/$1.tmp.$$/"
	rm -rf "${releases:?}/$1"
	mv "$releases/$1.tmp.$$" "$releases/$1"
}

# switch TARGET: point current at TARGET and reload. On failure current
# points back at the release that serves, and switch fails.
switch() {
	from=$(serving)
	swap "$1" || return 1
	echo "release: current -> $1 (was $from), reloading"
	rc=0
	handoff reload --pidfile "$PIDFILE" || rc=$?
	if [ "$rc" -eq 3 ]; then
		# The reload's --timeout passed first: the upgrade goes on in the
		# service. Its outcome is whatever serves once it is over.
		echo "release: the reload is still in progress; waiting for its outcome" >&2
		i=0
		while handoff status --json --pidfile "$PIDFILE" 2>/dev/null | grep -q '"upgrade_in_progress": true'; do
			i=$((i + 1))
			[ "$i" -le "${RELOAD_WAIT:-600}" ] || die "the reload still has no outcome after ${RELOAD_WAIT:-600}s; current points at $1"
			sleep 1
		done
		if [ "$(served)" = "$1" ]; then
			echo "release: $1 serves"
			return 0
		fi
	elif [ "$rc" -eq 0 ]; then
		return 0
	fi
	back=$(served)
	[ -n "$back" ] || back=$from
	swap "$back" || die "could not point current back at $back"
	echo "release: reload failed; current points back at $back, which is serving" >&2
	return 1
}

# prune: keep the KEEP newest releases, and the serving one.
prune() {
	cur=$(serving)
	ordered | tail -n +"$((KEEP + 1))" | while read -r r; do
		[ "$r" = "$cur" ] || rm -rf "${releases:?}/$r"
	done
}

cmd=${1:-}
case "$cmd" in
install)
	lock
	if pid=$(running_pid); then
		die "a service is running (pid $pid, release $(serving)): deploy with 'make deploy' or stop it first"
	fi
	stage "$2"
	swap "$2"
	echo "release: serving $2 from $DEPLOYDIR/current"
	;;
check)
	# Before make deploy builds: is there something to deploy to?
	check_deploy "$2"
	;;
deploy)
	lock
	check_deploy "$2"
	stage "$2"
	if ! switch "$2"; then
		rm -rf "${releases:?}/$2"
		echo "release: removed the failed release $2" >&2
		exit 1
	fi
	prune
	;;
rollback)
	lock
	running_pid >/dev/null || die "no service running with pid file $PIDFILE"
	cur=$(serving)
	prev=$(older_than "$cur")
	[ -n "$prev" ] || die "no release older than $cur to roll back to"
	switch "$prev" || exit 1
	;;
run)
	# Serve deploy/current in the foreground. A reload replaces the process
	# (the new generation is a child of the old one), so wait on whichever
	# pid the PID file names until the service stops; Ctrl-C reaches every
	# generation, which drains and exits.
	shift
	"$DEPLOYDIR/current/hello" --pidfile "$PIDFILE" "$@" &
	first=$!
	trap 'echo "release: stopping" >&2' INT TERM
	wait "$first" 2>/dev/null || true
	while pid=$(cat "$PIDFILE" 2>/dev/null) && [ "$pid" != "$first" ] && kill -0 "$pid" 2>/dev/null; do
		sleep 1
	done
	;;
list)
	[ -d "$releases" ] || die "no releases in $releases"
	cur=$(serving)
	link=$(linked)
	ordered | while read -r r; do
		if [ "$r" = "$cur" ]; then
			echo "* $r (serving)"
		elif [ "$r" = "$link" ]; then
			echo "  $r (current link, not serving)"
		else
			echo "  $r"
		fi
	done
	;;
*)
	die "usage: release.sh install VERSION | run [HELLO FLAGS] | check VERSION | deploy VERSION | rollback | list"
	;;
esac
