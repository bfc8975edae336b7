package daemon

import (
	"errors"
	"fmt"

	"github.com/tcpshadow/tcpshadow/tcpstate"
)

// FieldError is a config value the daemon refuses, or could not use once
// running (an address it could not listen on). Field names the field as Go
// spells it from the config's root: "Engine.MSS", "Engine.Maps[1]",
// "MetricsAddr".
type FieldError struct {
	Field string
	Value any // the refused value; nil when the field is wrong as a whole
	Err   error
}

func (e *FieldError) Error() string {
	switch v := e.Value.(type) {
	case nil:
		return fmt.Sprintf("%s: %v", e.Field, e.Err)
	case string:
		return fmt.Sprintf("%s %q: %v", e.Field, v, e.Err)
	default:
		return fmt.Sprintf("%s %v: %v", e.Field, v, e.Err)
	}
}

func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(field string, value any, why string) error {
	return &FieldError{Field: field, Value: value, Err: errors.New(why)}
}

// inField files err, an error of the config at field, under field: the
// field a tcpstate.FieldError names is put under it, any other error
// becomes one of the field as a whole.
func inField(field string, err error) error {
	if err == nil {
		return nil
	}
	var fe *tcpstate.FieldError
	if errors.As(err, &fe) {
		return &FieldError{Field: field + "." + fe.Field, Value: fe.Value, Err: fe.Err}
	}
	return &FieldError{Field: field, Err: err}
}
