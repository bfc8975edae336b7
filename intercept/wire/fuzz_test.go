package wire

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
	"time"
)

func FuzzReader(f *testing.F) {
	frames := sampleFrames(f, false)
	for _, fr := range frames {
		if len(fr) < 4096 {
			f.Add(fr)
			f.Add(fr[:len(fr)-1])
		}
	}
	f.Add(bytes.Join([][]byte{AppendPing(nil, 1), replyFrame(3, 40), AppendError(nil, 1, "x")}, nil))
	f.Add(bytes.Join([][]byte{replyFrame(2, MaxReplyLen), replyFrame(5, 52+64)}, nil))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 0})
	f.Add(be.AppendUint32(nil, MaxFrameLen))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data))
		var again []byte // the frames read, encoded again
		for {
			typ, p, err := r.Next()
			if err != nil {
				switch {
				case err == io.EOF:
					if !bytes.Equal(again, data) {
						t.Fatalf("clean EOF, but the frames read do not make up the input")
					}
				case err == io.ErrUnexpectedEOF, errors.Is(err, ErrMalformed), errors.Is(err, ErrFrameTooLarge):
				default:
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if len(p) > MaxFrameLen-1 {
				t.Fatalf("payload of %d bytes", len(p))
			}
			again = append(again, frameOf(typ, p)...)
			checkParsers(t, typ, p)
		}
	})
}

func FuzzParse(f *testing.F) {
	for _, s := range samples() {
		fr := encode(f, s.typ, s.val)
		if len(fr) < 4096 {
			f.Add(fr[lenPrefix:])
		}
	}
	f.Add(append([]byte{byte(TypeRegister)}, flowBytes(mixed)...))
	f.Add(append([]byte{byte(TypeReplies)}, replyBytes(2, 40, 121)...))
	f.Add(append([]byte{byte(TypeReplies)}, replyBytes(3, 40, MaxReplyLen, MaxReplyLen+1)...))
	f.Add(append([]byte{byte(TypeHello)}, helloBytes(3, 5, "ab")...))
	f.Add(append([]byte{byte(TypeHello)}, v2HelloBytes(RoleCopier, "v2", time.Second, pool4)...))
	f.Add(append([]byte{byte(TypeError)}, errorBytes(3, "abc")...))
	f.Add([]byte{9, 1, 2})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		typ, p := MsgType(data[0]), data[1:]
		checkParsers(t, typ, p)
		v, err := parse(typ, p)
		if err != nil || !typ.Known() {
			return
		}
		typ2, p2 := readOne(t, encode(t, typ, v))
		if typ2 != typ {
			t.Fatalf("re-encoded as %v", typ2)
		}
		v2, err := parse(typ2, p2)
		if err != nil {
			t.Fatalf("re-encoded %v does not parse: %v", typ, err)
		}
		if !reflect.DeepEqual(v, v2) {
			t.Fatalf("%v: parsed %+v, after re-encoding %+v", typ, v, v2)
		}
		// The encoding is canonical, except that a hello of another
		// version may carry bytes this version does not know.
		if h, ok := v.(Hello); (!ok || h.Version == Version) && !bytes.Equal(p, p2) {
			t.Fatalf("%v: payload %x re-encoded as %x", typ, p, p2)
		}
	})
}
