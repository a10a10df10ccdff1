package stack_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v4"
)

// readmeStack is what the README's compose section ("As the tests run it,
// with podman") tells an operator to run: TestComposeStack runs these very
// commands, so the two cannot drift apart.
type readmeStack struct {
	builds [][]string // podman build's arguments, after $PODMAN_FLAGS
	up     []string   // the compose command's arguments, after "$COMPOSE"
}

// readmeMarker opens the README's paragraph whose sh block holds them.
const readmeMarker = "**As the tests run it, with podman**"

func readReadmeStack(t testing.TB) readmeStack {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	i := strings.Index(text, readmeMarker)
	if i < 0 {
		t.Fatalf("README.md has no %q section", readmeMarker)
	}
	text = text[i:]
	start := strings.Index(text, "```sh\n")
	if start < 0 {
		t.Fatalf("README.md: no sh block after %q", readmeMarker)
	}
	block := text[start+len("```sh\n"):]
	block = block[:strings.Index(block, "```")]
	var r readmeStack
	for _, line := range strings.Split(block, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) > 2 && f[0] == "podman" && f[1] == "$PODMAN_FLAGS" && f[2] == "build":
			r.builds = append(r.builds, f[2:])
		case slices.Contains(f, `"$COMPOSE"`) && slices.Contains(f, "up"):
			r.up = f[slices.Index(f, `"$COMPOSE"`)+1:]
		}
	}
	return r
}

// The README's build commands build every image the stack test needs under
// the compose file's names, and its `up` starts every service of the
// compose file but Grafana (which it says to add where its image can be
// pulled), detached and waiting for health.
func TestReadmeComposeCommandsAreTheStackTests(t *testing.T) {
	r := readReadmeStack(t)
	for _, img := range images {
		want := []string{"build", "--target", img.target, "-t", img.name, "."}
		if !slices.ContainsFunc(r.builds, func(b []string) bool { return slices.Equal(b, want) }) {
			t.Errorf("README builds %v; none is `podman $PODMAN_FLAGS %s`", r.builds, strings.Join(want, " "))
		}
	}
	if len(r.up) < 3 || r.up[0] != "up" || !slices.Contains(r.up, "-d") || !slices.Contains(r.up, "--wait") {
		t.Fatalf("README's compose up is %q, want `up -d --wait SERVICE...`", r.up)
	}
	data, err := os.ReadFile(filepath.Join(repoRoot, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Services map[string]any `yaml:"services"`
	}
	if err := yaml.Unmarshal(data, &file); err != nil {
		t.Fatal(err)
	}
	var want []string
	for name := range file.Services {
		if name != "grafana" {
			want = append(want, name)
		}
	}
	got := readmeServices(r)
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("README's compose up starts %v, want every service of docker-compose.yml but grafana: %v", got, want)
	}
}

// readmeServices are the services the README's compose up names.
func readmeServices(r readmeStack) []string {
	var out []string
	for _, a := range r.up[1:] {
		if !strings.HasPrefix(a, "-") {
			out = append(out, a)
		}
	}
	return out
}
