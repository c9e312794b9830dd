// Command gocheck decodes a secrets plugin's stdout as the Nomad client does,
// with the real encoding/json and hashicorp/go-version (tests/support/gocheck.py
// builds it in GOPATH mode and runs it).
//
//	gocheck fingerprint   < stdout    client/fingerprint/secrets.go
//	gocheck fetch P S     < stdout    allocrunner/taskrunner/secrets/plugin_provider.go
//	gocheck versions V...             which parse, and their sort order
//	gocheck compare A B               go-version's Compare
//
// One JSON object on stdout, exit 0; misuse exits 2.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"

	version "github.com/hashicorp/go-version"
)

// nomadVersion gives go-version v1.3.0 (Debian's) the UnmarshalText of
// v1.9.0 (Nomad's): a string goes through NewVersion and a parse error
// aborts the whole Unmarshal; without it the struct would decode as {}.
type nomadVersion struct{ v *version.Version }

func (n *nomadVersion) UnmarshalText(b []byte) error {
	v, err := version.NewVersion(string(b))
	n.v = v
	return err
}

// The types of client/commonplugins, decoded as Nomad does, into a pointer
// to a pointer: a top-level null sets it to nil without an error.
type pluginFingerprint struct {
	Version *nomadVersion `json:"version"`
	Type    *string       `json:"type"`
}

type secretResponse struct {
	Result map[string]string `json:"result"`
	Error  *string           `json:"error"`
}

const nilPanic = "output is JSON null: Nomad would dereference a nil pointer (panic)"

func fingerprint(stdout []byte) map[string]interface{} {
	res := &pluginFingerprint{}
	if err := json.Unmarshal(stdout, &res); err != nil {
		return map[string]interface{}{"ok": false, "decoded": false, "error": err.Error()}
	}
	if res == nil {
		return map[string]interface{}{"ok": false, "decoded": true, "error": nilPanic}
	}
	out := map[string]interface{}{"ok": false, "decoded": true, "type": res.Type}
	switch {
	case res.Version == nil || res.Version.v == nil:
		out["error"] = "skipped: version is missing or null"
	case res.Type == nil || *res.Type != "secrets":
		out["error"] = `skipped: type is not "secrets"`
	default:
		out["ok"] = true
	}
	if res.Version != nil && res.Version.v != nil {
		out["version"] = res.Version.v.Original() // the node attribute
	}
	return out
}

func fetch(stdout []byte, provider, secret string) map[string]interface{} {
	res := &secretResponse{}
	if err := json.Unmarshal(stdout, &res); err != nil {
		return map[string]interface{}{"ok": false, "decoded": false, "error": err.Error()}
	}
	if res == nil {
		return map[string]interface{}{"ok": false, "decoded": true, "error": nilPanic}
	}
	out := map[string]interface{}{"ok": res.Error == nil, "decoded": true, "result": res.Result, "plugin_error": res.Error}
	if res.Error != nil {
		out["error"] = fmt.Sprintf("provider %q for secret %q response contained error: %q", provider, secret, *res.Error)
	}
	return out
}

func versions(args []string) map[string]interface{} {
	errors := map[string]string{}
	var parsed []*version.Version
	for _, a := range args {
		if v, err := version.NewVersion(a); err != nil {
			errors[a] = err.Error()
		} else {
			parsed = append(parsed, v)
		}
	}
	sort.SliceStable(parsed, func(i, j int) bool { return parsed[i].LessThan(parsed[j]) })
	sorted := []string{}
	for _, v := range parsed {
		sorted = append(sorted, v.Original())
	}
	return map[string]interface{}{"errors": errors, "sorted": sorted}
}

func compare(a, b string) map[string]interface{} {
	va, err := version.NewVersion(a)
	if err == nil {
		var vb *version.Version
		if vb, err = version.NewVersion(b); err == nil {
			return map[string]interface{}{"cmp": va.Compare(vb)}
		}
	}
	return map[string]interface{}{"error": err.Error()}
}

func stdin() []byte {
	b, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gocheck:", err)
		os.Exit(2)
	}
	return b
}

func main() {
	var out interface{}
	args := os.Args[1:]
	switch {
	case len(args) == 1 && args[0] == "fingerprint":
		out = fingerprint(stdin())
	case len(args) == 3 && args[0] == "fetch":
		out = fetch(stdin(), args[1], args[2])
	case len(args) >= 1 && args[0] == "versions":
		out = versions(args[1:])
	case len(args) == 3 && args[0] == "compare":
		out = compare(args[1], args[2])
	default:
		fmt.Fprintln(os.Stderr, "usage: gocheck fingerprint | fetch PROVIDER SECRET | versions V... | compare A B")
		os.Exit(2)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(2)
	}
}
