package deadletters

import "errors"

var (
	// ErrBadFilter is returned (wrapped) when a Filter names an event type,
	// account, project, reason or time range no dead letter can match.
	ErrBadFilter = errors.New("bad dead-letter filter")
	// ErrWrongStream is returned (wrapped) when a replayed dead letter was
	// stored by a stream other than CALLBACKS: something else captures its
	// subject, and the dead letter is kept.
	ErrWrongStream = errors.New("replay stored outside CALLBACKS")
)
