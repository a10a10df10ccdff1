package deploy_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"
	sigsyaml "sigs.k8s.io/yaml"
)

// dashboard is the part of Grafana's dashboard model the tests check.
type dashboard struct {
	UID           string `json:"uid"`
	Title         string `json:"title"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query string `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		ID         int    `json:"id"`
		Type       string `json:"type"`
		Title      string `json:"title"`
		Datasource *struct {
			Type string `json:"type"`
			UID  string `json:"uid"`
		} `json:"datasource"`
		GridPos struct {
			H, W, X, Y int
		} `json:"gridPos"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(data) {
		t.Fatalf("%s is not valid JSON", dashboardFile)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

func TestGrafanaDashboardIsWellFormed(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" || d.SchemaVersion == 0 {
		t.Errorf("uid %q, title %q, schemaVersion %d: all are required", d.UID, d.Title, d.SchemaVersion)
	}
	// Queries go through a data source variable, so the dashboard works
	// with any Prometheus data source (compose's, kube-prometheus-stack's).
	hasVar := false
	for _, v := range d.Templating.List {
		hasVar = hasVar || (v.Name == "datasource" && v.Type == "datasource" && v.Query == "prometheus")
	}
	if !hasVar {
		t.Error("no datasource variable of type prometheus")
	}
	ids := map[int]bool{}
	queries := 0
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q does not use the datasource variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.Expr == "" || tg.RefID == "" {
				t.Errorf("panel %q: a target without expr or refId", p.Title)
			}
			queries++
		}
	}
	for where, q := range dashboardQueries(t) {
		if _, err := parser.NewParser(parser.Options{}).ParseExpr(q); err != nil {
			t.Errorf("%s: %v", where, err)
		}
	}
	if queries < 10 {
		t.Errorf("only %d queries", queries)
	}
}

func TestGrafanaProvisioningLoadsTheDashboardFromPrometheus(t *testing.T) {
	var ds struct {
		APIVersion  int `json:"apiVersion"`
		Datasources []struct {
			Name, Type, UID, Access, URL string
			IsDefault                    bool           `json:"isDefault"`
			JSONData                     map[string]any `json:"jsonData"`
		} `json:"datasources"`
	}
	readYAMLStrict(t, filepath.Join(repoRoot, "deploy", "grafana", "provisioning", "datasources", "prometheus.yml"), &ds)
	if len(ds.Datasources) != 1 || ds.Datasources[0].Type != "prometheus" || ds.Datasources[0].URL != "http://prometheus:9090" {
		t.Errorf("data sources %+v, want the compose Prometheus", ds.Datasources)
	}
	var dash struct {
		APIVersion int `json:"apiVersion"`
		Providers  []struct {
			Name, Folder, Type string
			DisableDeletion    bool `json:"disableDeletion"`
			AllowUIUpdates     bool `json:"allowUiUpdates"`
			Options            struct {
				Path string `json:"path"`
			} `json:"options"`
		} `json:"providers"`
	}
	readYAMLStrict(t, filepath.Join(repoRoot, "deploy", "grafana", "provisioning", "dashboards", "stargazer.yml"), &dash)
	if len(dash.Providers) != 1 || dash.Providers[0].Type != "file" {
		t.Fatalf("providers %+v", dash.Providers)
	}
	// The compose file mounts the dashboard where the provider looks.
	g := service(t, mustLoadCompose(t), "grafana")
	want, _ := filepath.Abs(dashboardFile)
	found := false
	for _, v := range g.Volumes {
		found = found || (v.Source == want && filepath.Dir(v.Target) == dash.Providers[0].Options.Path)
	}
	if !found {
		t.Errorf("grafana does not mount %s under %s: %+v", want, dash.Providers[0].Options.Path, g.Volumes)
	}
}

// readYAMLStrict decodes a YAML file into v, refusing fields v lacks.
func readYAMLStrict(t *testing.T, file string, v any) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := sigsyaml.UnmarshalStrict(bytes.TrimSpace(data), v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}
