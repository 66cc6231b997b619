from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CacheState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_STATE_UNSPECIFIED: _ClassVar[CacheState]
    CACHE_STATE_EMPTY: _ClassVar[CacheState]
    CACHE_STATE_VALID: _ClassVar[CacheState]
    CACHE_STATE_STALE: _ClassVar[CacheState]
    CACHE_STATE_FAILED: _ClassVar[CacheState]
    CACHE_STATE_NEEDS_AUTHORIZATION: _ClassVar[CacheState]
CACHE_STATE_UNSPECIFIED: CacheState
CACHE_STATE_EMPTY: CacheState
CACHE_STATE_VALID: CacheState
CACHE_STATE_STALE: CacheState
CACHE_STATE_FAILED: CacheState
CACHE_STATE_NEEDS_AUTHORIZATION: CacheState

class CreateConnectLinkRequest(_message.Message):
    __slots__ = ("profile", "subject", "ttl_seconds")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    profile: str
    subject: str
    ttl_seconds: int
    def __init__(self, profile: _Optional[str] = ..., subject: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class CreateConnectLinkResponse(_message.Message):
    __slots__ = ("url", "expires_at")
    URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    url: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, url: _Optional[str] = ..., expires_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetTokenRequest(_message.Message):
    __slots__ = ("profile", "min_ttl", "rejected_token", "scopes", "audience", "resource", "subject_token", "subject_token_type", "subject")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    MIN_TTL_FIELD_NUMBER: _ClassVar[int]
    REJECTED_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_TOKEN_TYPE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    profile: str
    min_ttl: _duration_pb2.Duration
    rejected_token: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    audience: str
    resource: str
    subject_token: str
    subject_token_type: str
    subject: str
    def __init__(self, profile: _Optional[str] = ..., min_ttl: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., rejected_token: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., audience: _Optional[str] = ..., resource: _Optional[str] = ..., subject_token: _Optional[str] = ..., subject_token_type: _Optional[str] = ..., subject: _Optional[str] = ...) -> None: ...

class Token(_message.Message):
    __slots__ = ("access_token", "token_type", "expires_at", "scopes", "headers", "profile")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TYPE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    access_token: str
    token_type: str
    expires_at: _timestamp_pb2.Timestamp
    scopes: _containers.RepeatedScalarFieldContainer[str]
    headers: _containers.ScalarMap[str, str]
    profile: str
    def __init__(self, access_token: _Optional[str] = ..., token_type: _Optional[str] = ..., expires_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., scopes: _Optional[_Iterable[str]] = ..., headers: _Optional[_Mapping[str, str]] = ..., profile: _Optional[str] = ...) -> None: ...

class ListProfilesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListProfilesResponse(_message.Message):
    __slots__ = ("profiles",)
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    profiles: _containers.RepeatedCompositeFieldContainer[ProfileInfo]
    def __init__(self, profiles: _Optional[_Iterable[_Union[ProfileInfo, _Mapping]]] = ...) -> None: ...

class ProfileInfo(_message.Message):
    __slots__ = ("name", "grant", "token_endpoint_host", "scopes", "cache_state", "expires_at", "last_refresh", "last_error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ENDPOINT_HOST_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    CACHE_STATE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_REFRESH_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    grant: str
    token_endpoint_host: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    cache_state: CacheState
    expires_at: _timestamp_pb2.Timestamp
    last_refresh: _timestamp_pb2.Timestamp
    last_error: str
    def __init__(self, name: _Optional[str] = ..., grant: _Optional[str] = ..., token_endpoint_host: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., cache_state: _Optional[_Union[CacheState, str]] = ..., expires_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., last_refresh: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ...) -> None: ...

class WatchTokenRequest(_message.Message):
    __slots__ = ("profile", "subject")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    profile: str
    subject: str
    def __init__(self, profile: _Optional[str] = ..., subject: _Optional[str] = ...) -> None: ...

class ListConnectionsRequest(_message.Message):
    __slots__ = ("profile", "page_size", "page_token")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    profile: str
    page_size: int
    page_token: str
    def __init__(self, profile: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListConnectionsResponse(_message.Message):
    __slots__ = ("connections", "next_page_token")
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    connections: _containers.RepeatedCompositeFieldContainer[ConnectionInfo]
    next_page_token: str
    def __init__(self, connections: _Optional[_Iterable[_Union[ConnectionInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ConnectionInfo(_message.Message):
    __slots__ = ("subject", "cache_state", "created_at", "updated_at", "expires_at", "last_refresh", "last_error")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    CACHE_STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_REFRESH_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    subject: str
    cache_state: CacheState
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    last_refresh: _timestamp_pb2.Timestamp
    last_error: str
    def __init__(self, subject: _Optional[str] = ..., cache_state: _Optional[_Union[CacheState, str]] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., last_refresh: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ...) -> None: ...

class RevokeConnectionRequest(_message.Message):
    __slots__ = ("profile", "subject")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    profile: str
    subject: str
    def __init__(self, profile: _Optional[str] = ..., subject: _Optional[str] = ...) -> None: ...

class RevokeConnectionResponse(_message.Message):
    __slots__ = ("revoked_at_provider",)
    REVOKED_AT_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    revoked_at_provider: bool
    def __init__(self, revoked_at_provider: bool = ...) -> None: ...

class PutConnectionRequest(_message.Message):
    __slots__ = ("profile", "subject", "refresh_token", "replace", "scope")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    REFRESH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    profile: str
    subject: str
    refresh_token: str
    replace: bool
    scope: str
    def __init__(self, profile: _Optional[str] = ..., subject: _Optional[str] = ..., refresh_token: _Optional[str] = ..., replace: bool = ..., scope: _Optional[str] = ...) -> None: ...

class PutConnectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
