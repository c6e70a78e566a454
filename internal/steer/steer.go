// Package steer decides, in the kernel, which of several listening sockets
// on one TCP address gets each new connection.
//
// The sockets form one SO_REUSEPORT group. A classic BPF program attached
// to the group with SO_ATTACH_REUSEPORT_CBPF (no privilege needed) returns,
// for each incoming SYN, the index of the socket that gets the connection.
// That index is the socket's position in the group: sockets join at the
// end when they start listening, and when one leaves (its last descriptor
// is closed) the kernel moves the last socket into its place
// (net/core/sock_reuseport.c, __reuseport_detach_sock). A Group therefore
// never lets a socket leave while it steers: it keeps a descriptor of
// every socket, so the positions stay those of the order they were
// created in, and only the program changes.
//
// It also tells, from the kernel, whether a socket's accept queue is empty
// (TCP_INFO on the listener) and how many connections on the group's port
// a process holds (sock_diag, matched by inode with /proc/PID/fd): what a
// supervisor needs to retire a worker process only once it is idle.
//
// Linux only; elsewhere Check returns ErrUnsupported.
package steer

import "errors"

// ErrUnsupported: the kernel or the socket lacks what steering needs.
var ErrUnsupported = errors.New("steer: kernel steering unsupported")
