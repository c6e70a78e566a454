#!/bin/sh
# Releases for `make run`, `make deploy`, `make rollback` and `make releases`.
# Every change of the `current` link is atomic: a new link is renamed over it.
set -eu

DEPLOYDIR=${DEPLOYDIR:-deploy}
PIDFILE=${PIDFILE:-run/hello.pid}
KEEP=${KEEP:-5}
HANDOFF=${HANDOFF:-bin/handoff}
releases="$DEPLOYDIR/releases"

die() { echo "release: $*" >&2; exit 1; }

# swap TARGET: point current at releases/TARGET atomically.
swap() {
	ln -s "releases/$1" "$DEPLOYDIR/.current.tmp.$$"
	mv -T "$DEPLOYDIR/.current.tmp.$$" "$DEPLOYDIR/current"
}

serving() { readlink "$DEPLOYDIR/current" 2>/dev/null | sed 's|^releases/||'; }

# stage VERSION: copy the freshly built binaries into their release folder.
stage() {
	[ -n "$1" ] || die "empty VERSION"
	case "$1" in */*|.*) die "VERSION $1 must not contain / or start with a dot";; esac
	mkdir -p "$releases/$1.tmp.$$"
	cp bin/hello bin/handoff "$releases/$1.tmp.$$/"
	rm -rf "$releases/$1"
	mv "$releases/$1.tmp.$$" "$releases/$1"
}

# reload_or_revert PREVIOUS: reload; on failure put PREVIOUS back.
reload_or_revert() {
	if "$HANDOFF" reload --pidfile "$PIDFILE"; then
		return 0
	fi
	if [ -n "$1" ]; then
		swap "$1"
		echo "release: reload failed; current points back at $1, which is serving" >&2
	fi
	exit 1
}

prune() {
	cur=$(serving)
	ls -1t "$releases" | grep -v '\.tmp\.' | tail -n +"$((KEEP + 1))" | while read -r r; do
		[ "$r" = "$cur" ] || rm -rf "${releases:?}/$r"
	done
}

cmd=${1:-}
case "$cmd" in
install)
	stage "$2"
	swap "$2"
	echo "release: serving $2 from $DEPLOYDIR/current"
	;;
deploy)
	[ -L "$DEPLOYDIR/current" ] || die "no current release: start one with 'make run'"
	prev=$(serving)
	stage "$2"
	swap "$2"
	echo "release: current -> $2 (was $prev), reloading"
	reload_or_revert "$prev"
	echo "$prev" > "$DEPLOYDIR/previous"
	prune
	;;
rollback)
	[ -f "$DEPLOYDIR/previous" ] || die "no previous release recorded"
	prev=$(cat "$DEPLOYDIR/previous")
	[ -d "$releases/$prev" ] || die "previous release $prev is gone"
	cur=$(serving)
	swap "$prev"
	echo "release: current -> $prev (was $cur), reloading"
	reload_or_revert "$cur"
	echo "$cur" > "$DEPLOYDIR/previous"
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
	ls -1t "$releases" | grep -v '\.tmp\.' | while read -r r; do
		if [ "$r" = "$cur" ]; then echo "* $r (serving)"; else echo "  $r"; fi
	done
	;;
*)
	die "usage: release.sh install VERSION | run [HELLO FLAGS] | deploy VERSION | rollback | list"
	;;
esac
