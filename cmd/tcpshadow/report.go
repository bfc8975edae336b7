package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/tcpshadow/tcpshadow/internal/compare"
)

type reportOptions struct {
	from    string
	json    bool
	timeout time.Duration
	// client fetches the report; nil means a plain http.Client. Tests put
	// an in-memory transport here.
	client *http.Client
}

func newReportCmd() *cobra.Command { return newReportCmdWith(&reportOptions{}) }

func newReportCmdWith(o *reportOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "report --from URL [--json]",
		Short: "Compare prod and the shadow: classes, mismatches and latency per map",
		Long: `report reads a copy daemon's comparison (its --metrics address, path
/report.json) and prints per map, side by side for prod and the shadow: the
requests, their response classes with counts and shares, the mismatching
(prod class, shadow class) pairs, latency p50/p90/p99, and the requests
that diverged most often. --json prints the snapshot itself.

The same is drawn at /report on the daemon's metrics address.

  tcpshadow report --from 198.18.0.1:9464
  tcpshadow report --from http://198.18.0.1:9464/report.json --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.timeout <= 0 {
				return fmt.Errorf("--timeout %v: must be positive", o.timeout)
			}
			u, err := compare.ReportURL(o.from)
			if err != nil {
				return err
			}
			c := o.client
			if c == nil {
				c = &http.Client{}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
			defer cancel()
			r, _, err := compare.FetchReport(ctx, c, u)
			if err != nil {
				return err
			}
			if o.json {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			return compare.WriteText(cmd.OutOrStdout(), r)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.from, "from", "", "the copy daemon's metrics address: HOST:PORT or a URL (path default "+compare.ReportPath+")")
	f.BoolVar(&o.json, "json", false, "print the report as JSON")
	f.DurationVar(&o.timeout, "timeout", 5*time.Second, "give up fetching after this long")
	return cmd
}
