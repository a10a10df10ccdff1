package kubeapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/testkit/kubeapi"
)

func TestStartServesTheAPIAndCleansUp(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and kube-apiserver; skipped with -short")
	}
	var pids []int
	t.Run("server", func(t *testing.T) {
		s := kubeapi.Start(t)
		t.Logf("kube-apiserver ready in %v", s.StartupTime.Round(time.Millisecond))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()

		out, err := s.Kubectl(ctx, t.TempDir(), "version", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		var v struct {
			ServerVersion struct{ GitVersion string } `json:"serverVersion"`
		}
		if err := json.Unmarshal(out, &v); err != nil {
			t.Fatalf("kubectl version: %v\n%s", err, out)
		}
		if !strings.HasPrefix(v.ServerVersion.GitVersion, "v1.") {
			t.Errorf("server version %q, want v1.x (built with its version in -ldflags)", v.ServerVersion.GitVersion)
		}

		// RBAC is on: the admin token works, a request without it is refused.
		if _, _, err := s.Shell(ctx, t.TempDir(), "kubectl create namespace probe && kubectl -n probe create configmap c --from-literal=k=v"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Kubectl(ctx, t.TempDir(), "--token=wrong", "get", "namespaces"); err == nil || !strings.Contains(err.Error(), "provide credentials") {
			t.Errorf("a wrong token: %v, want a refusal for credentials", err)
		}
		if _, err := s.Kubectl(ctx, t.TempDir(), "--as=nobody", "-n", "probe", "get", "configmaps"); err == nil || !strings.Contains(err.Error(), "Forbidden") {
			t.Errorf("a user without a role: %v, want Forbidden (RBAC)", err)
		}
		pids = s.PIDs()
		if len(pids) != 2 {
			t.Fatalf("PIDs %v, want etcd and kube-apiserver", pids)
		}
	})
	// The subtest's cleanup has run: both processes must be gone.
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("process %d still exists after cleanup (kill 0: %v)", pid, err)
		}
	}
}

// Without the tools, Start fails the test (it does not skip it) and names
// the command that installs them. The test runs itself in a child process
// whose cache directory is empty.
func TestStartFailsNamingTheInstallCommandWithoutTools(t *testing.T) {
	if os.Getenv("KUBEAPI_TEST_CHILD") == "1" {
		kubeapi.Start(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestStartFailsNamingTheInstallCommandWithoutTools$", "-test.v")
	cmd.Env = append(os.Environ(), "KUBEAPI_TEST_CHILD=1", "XDG_CACHE_HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("child test: %v, want it to fail\n%s", err, out)
	}
	if !strings.Contains(string(out), "--- FAIL") || !strings.Contains(string(out), "./scripts/test.sh --install-only") {
		t.Errorf("child test output does not fail naming ./scripts/test.sh --install-only:\n%s", out)
	}
}
