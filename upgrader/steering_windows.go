package upgrader

import "net"

// steerListenConfig: no kernel steering on Windows.
func steerListenConfig() *net.ListenConfig { return nil }
