package upgrader

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"strconv"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
)

// Unix socket files of the service's listeners. Their rules:
//
//   - a new generation inherits the socket: the file is never unlinked
//     during an upgrade, failed or not (tableflip unlinks nothing after
//     an upgrade, and Stop leaves an unready new generation's sockets
//     alone);
//   - the last generation removes it when it stops (tableflip's Stop
//     without an upgrade); a draining old generation never does;
//   - at start, a stale file (a socket nobody accepts on: connect is
//     refused) is taken over with a warning; a live one (another process
//     accepts on it) and a file that is no socket are refused;
//   - the file gets SocketMode (default 0666, as systemd's SocketMode=
//     and nginx) and SocketUser/SocketGroup. On Linux it is created
//     with mode 0 (fchmod before bind), so nobody but root can connect
//     before it has its mode and owner.

// DefaultSocketMode is the mode of a unix socket file the upgrader
// creates when Options.SocketMode is 0.
const DefaultSocketMode os.FileMode = 0o666

// isUnixPath reports whether network and addr name a unix socket file,
// not one in Linux's abstract namespace.
func isUnixPath(network, addr string) bool {
	return (network == "unix" || network == "unixpacket") && addr != "" && addr[0] != '@'
}

// listenUnix returns the unix listener at path: inherited from the
// previous generation, or created by the rules above. It is tableflip's
// Listen with a stale check and a mode and owner.
func (u *Upgrader) listenUnix(network, path string) (net.Listener, error) {
	if ln, err := u.tf.Listener(network, path); ln != nil || err != nil {
		return ln, err
	}
	uid, gid, err := socketOwner(u.opts.SocketUser, u.opts.SocketGroup)
	if err != nil {
		return nil, err
	}
	if err := u.takeOverStale(network, path); err != nil {
		return nil, err
	}
	lc := net.ListenConfig{}
	if u.opts.ListenConfig != nil {
		lc = *u.opts.ListenConfig
	}
	userControl := lc.Control
	lc.Control = func(network, address string, c syscall.RawConn) error {
		if userControl != nil {
			if err := userControl(network, address, c); err != nil {
				return err
			}
		}
		// Linux gives the file bind creates the socket's own mode, less
		// the umask: 0, so nobody connects before the chmod below.
		c.Control(clearSocketMode)
		return nil
	}
	ln, err := lc.Listen(context.Background(), network, path)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (net.Listener, error) {
		ln.Close() // unlinks the file: it is still this listener's
		return nil, err
	}
	if uid != -1 || gid != -1 {
		if err := os.Lchown(path, uid, gid); err != nil {
			return fail(fmt.Errorf("socket owner: %w", err))
		}
	}
	mode := u.opts.SocketMode
	if mode == 0 {
		mode = DefaultSocketMode
	}
	if err := os.Chmod(path, mode); err != nil {
		return fail(fmt.Errorf("socket mode: %w", err))
	}
	tl, ok := ln.(tableflip.Listener)
	if !ok {
		return fail(fmt.Errorf("%T cannot be passed on", ln))
	}
	if err := u.tf.AddListener(network, path, tl); err != nil {
		return fail(err)
	}
	return ln, nil
}

// takeOverStale removes a stale socket file at path, left by a process
// that died without removing it, and refuses a file that is live or not a
// socket.
func (u *Upgrader) takeOverStale(network, path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket: remove it or listen elsewhere", path)
	}
	c, err := net.DialTimeout(network, path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s is in use: another process accepts connections on it", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("%s exists, and whether another process serves on it is unknown: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	u.log.Warn("taking over stale unix socket: nobody accepted on it", "path", path)
	return nil
}

// socketOwner resolves a user and a group, names or numeric ids, to the
// uid and gid for os.Lchown; -1 for an empty one (unchanged).
func socketOwner(userName, group string) (uid, gid int, err error) {
	uid, gid = -1, -1
	if userName != "" {
		if uid, err = strconv.Atoi(userName); err != nil {
			usr, lerr := user.Lookup(userName)
			if lerr != nil {
				return 0, 0, fmt.Errorf("socket user %q: %w", userName, lerr)
			}
			uid, _ = strconv.Atoi(usr.Uid)
		}
	}
	if group != "" {
		if gid, err = strconv.Atoi(group); err != nil {
			grp, lerr := user.LookupGroup(group)
			if lerr != nil {
				return 0, 0, fmt.Errorf("socket group %q: %w", group, lerr)
			}
			gid, _ = strconv.Atoi(grp.Gid)
		}
	}
	return uid, gid, nil
}
