package doctor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

var _ OutputHost = System{}

// OutputChains implements OutputHost with nft's JSON output; iptables-nft
// rules show there too, iptables-legacy ones do not.
func (System) OutputChains() ([]string, error) {
	nft, err := exec.LookPath("nft")
	if err != nil {
		return nil, ErrNotChecked
	}
	ctx, cancel := context.WithTimeout(context.Background(), nftTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, nft, "-j", "list", "ruleset").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && len(ee.Stderr) > 0 {
			return nil, fmt.Errorf("nft -j list ruleset: %w: %s", err, strings.TrimSpace(string(ee.Stderr)))
		}
		return nil, fmt.Errorf("nft -j list ruleset: %w", err)
	}
	return parseOutputChains(out)
}

// parseOutputChains returns the base chains on the output and
// postrouting hooks of the ip, ip6 and inet families that hold rules or
// drop by policy, from `nft -j list ruleset`.
func parseOutputChains(b []byte) ([]string, error) {
	var doc struct {
		Nftables []struct {
			Chain *struct {
				Family, Table, Name, Hook, Policy string
			} `json:"chain"`
			Rule *struct {
				Family, Table, Chain string
			} `json:"rule"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("nft json: %w", err)
	}
	type key struct{ family, table, chain string }
	rules := map[key]int{}
	for _, o := range doc.Nftables {
		if r := o.Rule; r != nil {
			rules[key{r.Family, r.Table, r.Chain}]++
		}
	}
	var out []string
	for _, o := range doc.Nftables {
		c := o.Chain
		if c == nil || (c.Hook != "output" && c.Hook != "postrouting") {
			continue
		}
		if c.Family != "ip" && c.Family != "ip6" && c.Family != "inet" {
			continue
		}
		n := rules[key{c.Family, c.Table, c.Name}]
		if n == 0 && c.Policy != "drop" {
			continue
		}
		out = append(out, fmt.Sprintf("%s %s %s (%s hook, %d rules, policy %s)", c.Family, c.Table, c.Name, c.Hook, n, c.Policy))
	}
	return out, nil
}
