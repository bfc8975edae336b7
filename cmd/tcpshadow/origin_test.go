package main

import (
	"errors"
	"fmt"
	"testing"

	"github.com/tcpshadow/tcpshadow/internal/daemon"
)

// TestExplain checks a daemon's field error is told as the flag or file
// key that set the field, with the value as the user wrote it.
func TestExplain(t *testing.T) {
	fields := map[string]fieldFlag{
		"Engine.MSS":         {flag: "mss"},
		"Engine.Maps":        {flag: "map", given: []string{"80-198.18.1.2:80", "81-198.18.1.2:81"}},
		"Capture.BufferSize": {flag: "capture-buffer-mb", given: 4097},
		"MetricsAddr":        {flag: "metrics"},
	}
	file := origin{table: "copy", keys: map[string]string{"map": "copy.map", "mss": "copy.mss"}}
	why := errors.New("why")
	tests := []struct {
		from origin
		err  error
		want string
	}{
		{origin{}, &daemon.FieldError{Field: "Engine.MSS", Value: 100, Err: why}, "--mss 100: why"},
		{file, &daemon.FieldError{Field: "Engine.MSS", Value: 100, Err: why}, "copy.mss 100: why"},
		{file, &daemon.FieldError{Field: "Engine.Maps[1]", Value: 1, Err: why}, `copy.map[1] "81-198.18.1.2:81": why`},
		{origin{}, &daemon.FieldError{Field: "Engine.Maps", Err: why}, "--map: why"},
		{origin{}, &daemon.FieldError{Field: "Capture.BufferSize", Value: 4097 << 20, Err: why}, "--capture-buffer-mb 4097: why"},
		{origin{}, fmt.Errorf("run: %w", &daemon.FieldError{Field: "MetricsAddr", Err: why}), "--metrics: why"},
		{origin{}, &daemon.FieldError{Field: "Engine.RTOMin", Value: 1, Err: why}, "Engine.RTOMin 1: why"},
		{origin{}, why, "why"},
	}
	for _, tt := range tests {
		got := tt.from.explain(tt.err, fields)
		if got.Error() != tt.want {
			t.Errorf("explain(%v) = %q, want %q", tt.err, got, tt.want)
		}
		if !errors.Is(got, why) {
			t.Errorf("explain(%v) = %v: lost the cause", tt.err, got)
		}
	}
}
