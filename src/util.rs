//! Small pieces shared by the actors.

use tokio::task::JoinHandle;

/// A spawned task that belongs to an actor's state: when the state is dropped
/// (a stop, or a panic that ractor caught) the task is aborted with it, so a
/// crashed actor leaves no orphan loop behind.
#[derive(Debug)]
pub struct AbortOnDrop<T = ()>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Characters escaped in a URL component: everything but RFC 3986's
/// unreserved set.
pub const URL_COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
