package falkortest_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
)

func TestStartServesGraphQueriesWithThePinnedModule(t *testing.T) {
	s := falkortest.Start(t)
	c := s.Client(t)
	ctx := context.Background()

	reply, err := c.Do(ctx, "GRAPH.QUERY", "g", "RETURN 1 + 1", "--compact").Slice()
	if err != nil {
		t.Fatalf("GRAPH.QUERY: %v", err)
	}
	if len(reply) != 3 {
		t.Fatalf("compact reply %v: want header, rows, stats", reply)
	}

	mods, err := c.Do(ctx, "MODULE", "LIST").Slice()
	if err != nil {
		t.Fatal(err)
	}
	want := int64(0) // "4.16.3" -> 41603
	for _, part := range strings.Split(falkortest.Version, ".") {
		n, err := strconv.Atoi(part)
		if err != nil {
			t.Fatal(err)
		}
		want = want*100 + int64(n)
	}
	got := moduleVersion(t, mods, "graph")
	if got != want {
		t.Errorf("graph module version %d, want %d (FalkorDB %s)", got, want, falkortest.Version)
	}
}

// moduleVersion finds the "ver" of the named module in a MODULE LIST reply
// (RESP3 maps or RESP2 flat lists).
func moduleVersion(t *testing.T, mods []any, name string) int64 {
	t.Helper()
	for _, m := range mods {
		fields := map[string]any{}
		switch m := m.(type) {
		case map[any]any:
			for k, v := range m {
				fields[k.(string)] = v
			}
		case []any:
			for i := 0; i+1 < len(m); i += 2 {
				fields[m[i].(string)] = m[i+1]
			}
		}
		if fields["name"] == name {
			v, _ := fields["ver"].(int64)
			return v
		}
	}
	t.Fatalf("module %q not in MODULE LIST %v", name, mods)
	return 0
}

func TestStartPassesModuleArguments(t *testing.T) {
	s := falkortest.Start(t, "TIMEOUT_MAX", "1234")
	reply, err := s.Client(t).Do(context.Background(), "GRAPH.CONFIG", "GET", "TIMEOUT_MAX").Slice()
	if err != nil {
		t.Fatal(err)
	}
	if len(reply) != 2 || reply[1] != int64(1234) {
		t.Errorf("TIMEOUT_MAX = %v, want 1234", reply)
	}
}

func TestServersAreIndependent(t *testing.T) {
	a, b := falkortest.Start(t), falkortest.Start(t)
	if a.Addr == b.Addr {
		t.Fatalf("both servers on %s", a.Addr)
	}
	ctx := context.Background()
	if err := a.Client(t).Do(ctx, "GRAPH.QUERY", "g", "CREATE (:N)").Err(); err != nil {
		t.Fatal(err)
	}
	n, err := b.Client(t).Exists(ctx, "g").Result()
	if err != nil || n != 0 {
		t.Errorf("graph g on the second server: exists=%d err=%v, want 0", n, err)
	}
}

func TestStopEndsTheServer(t *testing.T) {
	s := falkortest.Start(t)
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1})
	defer c.Close()
	s.Stop()
	if err := c.Ping(context.Background()).Err(); err == nil {
		t.Error("server still answers after Stop")
	}
}

func TestMissingModuleErrorSaysHowToInstall(t *testing.T) {
	t.Setenv(falkortest.EnvModule, filepath.Join(t.TempDir(), "falkordb.so"))
	_, err := falkortest.ModulePath()
	if err == nil || !strings.Contains(err.Error(), "scripts/test.sh") {
		t.Errorf("ModulePath() error = %v, want one that names scripts/test.sh", err)
	}
}

func TestMissingServerErrorSaysHowToInstall(t *testing.T) {
	t.Setenv(falkortest.EnvServer, "")
	t.Setenv("PATH", t.TempDir())
	_, err := falkortest.ServerPath()
	if err == nil || !strings.Contains(err.Error(), "scripts/test.sh") {
		t.Errorf("ServerPath() error = %v, want one that names scripts/test.sh", err)
	}
}

func TestDefaultModulePathIsTheOneTestShInstalls(t *testing.T) {
	cache := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", cache)
	got, err := falkortest.DefaultModulePath()
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(cache, "stargazer-jobs", "falkordb-"+falkortest.Version, "falkordb.so")
	if got != want {
		t.Errorf("DefaultModulePath() = %s, want %s (scripts/test.sh installs there)", got, want)
	}
}

func TestVersionMatchesTestSh(t *testing.T) {
	script, err := os.ReadFile("../../../scripts/test.sh")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(script), "\nFALKORDB_VERSION="+falkortest.Version+"\n") {
		t.Errorf("scripts/test.sh does not install FALKORDB_VERSION=%s", falkortest.Version)
	}
}
