package settings

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/subjects"
)

// Key prefixes in the settings bucket (SPEC §4): project.<id>, account.<id>,
// ssoclient.<id>.
const (
	projectPrefix   = "project."
	accountPrefix   = "account."
	ssoClientPrefix = "ssoclient."
)

// ProjectKey is the bucket key of project id.
func ProjectKey(id string) string { return projectPrefix + id }

// AccountKey is the bucket key of account id.
func AccountKey(id string) string { return accountPrefix + id }

// SSOClientKey is the bucket key of SSO client id.
func SSOClientKey(id string) string { return ssoClientPrefix + id }

// maxCASRetries bounds compare-and-set retries under write conflicts.
const maxCASRetries = 20

// StoreOptions configure the settings bucket when it is created.
type StoreOptions struct {
	// Replicas of the bucket's stream (0 → 1).
	Replicas int
	// View, when set, is this process's watched view of the bucket. A key
	// whose stored value is invalid is read from it once it has applied
	// that value: the view holds the value in effect however many invalid
	// writes came after it, where the key's history keeps only History.
	View *View
}

// History is how many revisions of a key the settings bucket keeps (the
// most JetStream allows): after a restart, the last valid value of a key
// is found among them (SPEC §4).
const History = 64

// Store reads and writes settings in the KV bucket. It reads a key as the
// View does: an invalid stored value is not in effect, the last valid one
// before it is (the View's, else the newest valid one in the key's
// history, else none), so the API shows, and an update starts from, the
// settings the dispatchers use.
type Store struct {
	kv   jetstream.KeyValue
	view *View
}

// OpenStore opens the settings bucket, creating it when absent.
func OpenStore(ctx context.Context, js jetstream.JetStream, o StoreOptions) (*Store, error) {
	kv, err := js.KeyValue(ctx, subjects.SettingsBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		replicas := max(o.Replicas, 1)
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      subjects.SettingsBucket,
			Description: "callbackd project, account and SSO-client settings",
			History:     History,
			Storage:     jetstream.FileStorage,
			Replicas:    replicas,
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, subjects.SettingsBucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("open settings bucket %s: %w", subjects.SettingsBucket, err)
	}
	return &Store{kv: kv, view: o.View}, nil
}

// KV returns the bucket, for the watched View.
func (s *Store) KV() jetstream.KeyValue { return s.kv }

// Project returns project id's settings; an ID without settings gives the zero Project.
func (s *Store) Project(ctx context.Context, id string) (Project, error) {
	p, _, err := get(ctx, s, ProjectKey(id), ParseProject, s.view.project(id))
	return p, err
}

// Account returns account id's settings; an ID without settings gives the zero Account.
func (s *Store) Account(ctx context.Context, id string) (Account, error) {
	a, _, err := get(ctx, s, AccountKey(id), ParseAccount, s.view.account(id))
	return a, err
}

// SSOClient returns SSO client id's settings; an ID without settings gives the zero SSOClient.
func (s *Store) SSOClient(ctx context.Context, id string) (SSOClient, error) {
	c, _, err := get(ctx, s, SSOClientKey(id), ParseSSOClient, s.view.ssoClient(id))
	return c, err
}

// UpdateProject applies fn to project id's current settings and stores the
// result with compare-and-set, retrying on conflict. Nothing is stored when
// fn fails or the result is invalid.
func (s *Store) UpdateProject(ctx context.Context, id string, fn func(*Project) error) (Project, error) {
	return update(ctx, s, "project", id, ProjectKey(id), ParseProject, s.view.project(id), fn, Project.Validate)
}

// UpdateAccount is UpdateProject for accounts.
func (s *Store) UpdateAccount(ctx context.Context, id string, fn func(*Account) error) (Account, error) {
	return update(ctx, s, "account", id, AccountKey(id), ParseAccount, s.view.account(id), fn, Account.Validate)
}

// UpdateSSOClient is UpdateProject for SSO clients.
func (s *Store) UpdateSSOClient(ctx context.Context, id string, fn func(*SSOClient) error) (SSOClient, error) {
	return update(ctx, s, "SSO client", id, SSOClientKey(id), ParseSSOClient, s.view.ssoClient(id), fn, SSOClient.Validate)
}

// held is the value a View holds for one key, ok once the view has applied
// revision rev of the bucket.
type held[T any] func(rev uint64) (v T, ok bool)

func get[T any](ctx context.Context, s *Store, key string, parse func([]byte) (T, error), inView held[T]) (T, uint64, error) {
	var zero T
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return zero, 0, nil
	}
	if err != nil {
		return zero, 0, fmt.Errorf("get %s: %w", key, err)
	}
	v, err := parse(e.Value())
	if err != nil {
		// Not in effect: the last valid value is, and an update starts
		// from it (with the current revision, so that it replaces the bad
		// value).
		if hv, ok := inView(e.Revision()); ok {
			return hv, e.Revision(), nil
		}
		v, err = lastValid(ctx, s.kv, key, parse)
		if err != nil {
			return zero, 0, err
		}
	}
	return v, e.Revision(), nil
}

// lastValid returns the newest valid value in key's history, the zero
// value when a delete or purge comes first or no revision kept is valid
// (the bucket keeps History).
func lastValid[T any](ctx context.Context, kv jetstream.KeyValue, key string, parse func([]byte) (T, error)) (T, error) {
	var zero T
	hist, err := kv.History(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return zero, nil
	}
	if err != nil {
		return zero, fmt.Errorf("history of %s: %w", key, err)
	}
	for i := len(hist) - 1; i >= 0; i-- {
		if hist[i].Operation() != jetstream.KeyValuePut {
			return zero, nil
		}
		if v, err := parse(hist[i].Value()); err == nil {
			return v, nil
		}
	}
	return zero, nil
}

func update[T any](ctx context.Context, s *Store, kind, id, key string, parse func([]byte) (T, error), inView held[T], fn func(*T) error, validate func(T) error) (T, error) {
	var zero T
	if err := subjects.ValidateID(id); err != nil {
		return zero, &FieldError{Field: "id", Msg: fmt.Sprintf("%s id %q must be a decimal integer without leading zeros", kind, id)}
	}
	for range maxCASRetries {
		cur, rev, err := get(ctx, s, key, parse, inView)
		if err != nil {
			return zero, err
		}
		if err := fn(&cur); err != nil {
			return zero, err
		}
		if err := validate(cur); err != nil {
			return zero, err
		}
		data, err := json.Marshal(cur)
		if err != nil {
			return zero, fmt.Errorf("encode %s: %w", key, err)
		}
		if rev == 0 {
			_, err = s.kv.Create(ctx, key, data)
		} else {
			_, err = s.kv.Update(ctx, key, data, rev)
		}
		if err == nil {
			return cur, nil
		}
		if !isConflict(err) {
			return zero, fmt.Errorf("store %s: %w", key, err)
		}
	}
	return zero, fmt.Errorf("store %s: gave up after %d write conflicts", key, maxCASRetries)
}

// isConflict reports whether a Create/Update lost a compare-and-set race.
func isConflict(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) {
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
		return true
	}
	return strings.Contains(err.Error(), "wrong last sequence")
}
