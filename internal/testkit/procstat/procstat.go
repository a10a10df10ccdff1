// Package procstat counts a process's TCP sockets from /proc (Linux), so
// a test or the chaos harness can see from outside whether a worker holds
// on to connections it should have closed.
package procstat

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// established is the ESTABLISHED state in /proc/net/tcp's st column.
const established = 0x01

// socket is one of a process's TCP sockets.
type socket struct {
	state      uint64
	remotePort int
}

// Established counts pid's established TCP connections.
func Established(pid int) int {
	n := 0
	for _, s := range sockets(pid) {
		if s.state == established {
			n++
		}
	}
	return n
}

// ConnsTo counts pid's TCP sockets whose remote port is port, in any
// state: one stuck closing or still connecting counts too.
func ConnsTo(pid, port int) int {
	n := 0
	for _, s := range sockets(pid) {
		if s.remotePort == port {
			n++
		}
	}
	return n
}

// sockets lists the TCP sockets (IPv4 and IPv6) pid holds open: the rows
// of its network namespace's tables whose inode is one of its file
// descriptors. A process that has gone holds none.
func sockets(pid int) []socket {
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	var out []socket
	for _, f := range []string{"tcp", "tcp6"} {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		for _, line := range strings.Split(string(b), "\n")[1:] {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fs := strings.Fields(line)
			if len(fs) < 10 || !inodes[fs[9]] {
				continue
			}
			s := socket{}
			s.state, _ = strconv.ParseUint(fs[3], 16, 8)
			if i := strings.LastIndexByte(fs[2], ':'); i > 0 {
				p, _ := strconv.ParseInt(fs[2][i+1:], 16, 32)
				s.remotePort = int(p)
			}
			out = append(out, s)
		}
	}
	return out
}
