package upgrader

import (
	"fmt"
	"net"
	"os"

	"github.com/gohandoff/handoff/internal/connpass"
)

// checkPeer lets only the owning uid (or root) use the control socket.
func checkPeer(conn net.Conn) error {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return nil
	}
	cred, err := connpass.PeerCred(uc)
	if err != nil {
		return err
	}
	if uid := os.Getuid(); cred.Uid != uint32(uid) && cred.Uid != 0 {
		return fmt.Errorf("refused: peer uid %d (pid %d) is not the owner uid %d", cred.Uid, cred.Pid, uid)
	}
	return nil
}
