package procstat

import (
	"net"
	"os"
	"testing"
)

func TestCountsThisProcesssConnections(t *testing.T) {
	if _, err := os.Stat("/proc/self/net/tcp"); err != nil {
		t.Skip("no /proc/net/tcp here")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	pid := os.Getpid()
	before, beforeTo := Established(pid), ConnsTo(pid, port)
	var conns []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c, s)
	}
	// Both ends are this process's: 6 established, 3 of them to port.
	if got := Established(pid) - before; got != 6 {
		t.Errorf("Established: %d more, want 6", got)
	}
	if got := ConnsTo(pid, port) - beforeTo; got != 3 {
		t.Errorf("ConnsTo(%d): %d more, want 3", port, got)
	}
	for _, c := range conns {
		c.Close()
	}
	if got := ConnsTo(pid, port); got != beforeTo {
		t.Errorf("ConnsTo(%d) after closing: %d, want %d", port, got, beforeTo)
	}
}
