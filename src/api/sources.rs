use tonic::{Request, Response, Status};

use super::{duration, timestamp, unknown_id_first};
use crate::{
    Error, Result,
    domain::{
        BotId, NewSource, PageRequest, RoutingSetting, Source, SourceChanges, SourceKey,
        SourceName, WeightTable,
    },
    proto::{self as pb, source_service_server::SourceService},
    repository::Repository,
};

pub struct SourceApi {
    repository: Repository,
}

impl SourceApi {
    pub fn new(repository: Repository) -> Self {
        Self { repository }
    }
}

#[tonic::async_trait]
impl SourceService for SourceApi {
    async fn create_source(
        &self,
        request: Request<pb::CreateSourceRequest>,
    ) -> Result<Response<pb::Source>, Status> {
        let new = NewSource::try_from(request.into_inner())?;
        Ok(Response::new(
            self.repository.create_source(new).await?.into(),
        ))
    }

    async fn update_source(
        &self,
        request: Request<pb::UpdateSourceRequest>,
    ) -> Result<Response<pb::Source>, Status> {
        let request = request.into_inner();
        let id = request.id;
        let changes = match parse_update(request) {
            Ok(changes) => changes,
            Err(invalid) => {
                let lookup = self.repository.get_source(SourceKey::Id(id));
                return Err(unknown_id_first(invalid, lookup).await.into());
            }
        };
        Ok(Response::new(
            self.repository.update_source(id, changes).await?.into(),
        ))
    }

    async fn get_source(
        &self,
        request: Request<pb::GetSourceRequest>,
    ) -> Result<Response<pb::Source>, Status> {
        let pb::GetSourceRequest { key } = request.into_inner();
        let key = match key {
            Some(pb::get_source_request::Key::Id(id)) => SourceKey::Id(id),
            Some(pb::get_source_request::Key::BotId(bot_id)) => {
                SourceKey::BotId(BotId::parse("bot_id", &bot_id)?)
            }
            None => return Err(Error::invalid("key", "set either id or bot_id").into()),
        };
        Ok(Response::new(self.repository.get_source(key).await?.into()))
    }

    async fn list_sources(
        &self,
        request: Request<pb::ListSourcesRequest>,
    ) -> Result<Response<pb::ListSourcesResponse>, Status> {
        let pb::ListSourcesRequest {
            page_size,
            page_token,
        } = request.into_inner();
        let page = PageRequest::parse(page_size, &page_token)?;
        let page = self.repository.list_sources(page).await?;
        Ok(Response::new(pb::ListSourcesResponse {
            sources: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn set_source_operators(
        &self,
        request: Request<pb::SetSourceOperatorsRequest>,
    ) -> Result<Response<pb::SetSourceOperatorsResponse>, Status> {
        let pb::SetSourceOperatorsRequest {
            source_id,
            operators,
        } = request.into_inner();
        let parsed = WeightTable::parse(
            "operators",
            operators.into_iter().map(|entry| {
                let pb::OperatorWeight {
                    operator_id,
                    weight,
                } = entry;
                (operator_id, weight)
            }),
        );
        let table = match parsed {
            Ok(table) => table,
            Err(invalid) => {
                let lookup = self.repository.list_source_operators(source_id);
                return Err(unknown_id_first(invalid, lookup).await.into());
            }
        };
        let table = self
            .repository
            .set_source_operators(source_id, table)
            .await?;
        Ok(Response::new(pb::SetSourceOperatorsResponse {
            operators: weights(&table),
        }))
    }

    async fn list_source_operators(
        &self,
        request: Request<pb::ListSourceOperatorsRequest>,
    ) -> Result<Response<pb::ListSourceOperatorsResponse>, Status> {
        let pb::ListSourceOperatorsRequest { source_id } = request.into_inner();
        let table = self.repository.list_source_operators(source_id).await?;
        Ok(Response::new(pb::ListSourceOperatorsResponse {
            operators: weights(&table),
        }))
    }
}

impl TryFrom<pb::CreateSourceRequest> for NewSource {
    type Error = Error;

    fn try_from(request: pb::CreateSourceRequest) -> Result<Self> {
        let pb::CreateSourceRequest {
            bot_id,
            name,
            accept_timeout,
            sticky_window,
        } = request;
        Ok(Self {
            bot_id: BotId::parse("bot_id", &bot_id)?,
            name: SourceName::parse("name", &name)?,
            accept_timeout: accept_timeout
                .map(|timeout| {
                    let prost_types::Duration { seconds, nanos } = timeout;
                    RoutingSetting::parse_present(
                        "accept_timeout",
                        seconds,
                        nanos,
                        RoutingSetting::ACCEPT_TIMEOUT_MAX,
                    )
                })
                .transpose()?,
            sticky_window: sticky_window
                .map(|window| {
                    let prost_types::Duration { seconds, nanos } = window;
                    RoutingSetting::parse_present(
                        "sticky_window",
                        seconds,
                        nanos,
                        RoutingSetting::STICKY_WINDOW_MAX,
                    )
                })
                .transpose()?,
        })
    }
}

/// An UpdateSource's changes; a zero duration turns its feature off.
fn parse_update(request: pb::UpdateSourceRequest) -> Result<SourceChanges> {
    let pb::UpdateSourceRequest {
        id: _,
        name,
        accept_timeout,
        sticky_window,
    } = request;
    let setting = |field: &str, value: Option<prost_types::Duration>, max| {
        value
            .map(|prost_types::Duration { seconds, nanos }| {
                RoutingSetting::parse(field, seconds, nanos, max)
            })
            .transpose()
    };
    SourceChanges::new(
        name.map(|name| SourceName::parse("name", &name))
            .transpose()?,
        setting(
            "accept_timeout",
            accept_timeout,
            RoutingSetting::ACCEPT_TIMEOUT_MAX,
        )?,
        setting(
            "sticky_window",
            sticky_window,
            RoutingSetting::STICKY_WINDOW_MAX,
        )?,
    )
}

impl From<Source> for pb::Source {
    fn from(source: Source) -> Self {
        let Source {
            id,
            bot_id,
            name,
            created_at,
            accept_timeout,
            sticky_window,
        } = source;
        Self {
            id,
            bot_id,
            name,
            created_at: Some(timestamp(created_at)),
            accept_timeout: accept_timeout.map(duration),
            sticky_window: sticky_window.map(duration),
        }
    }
}

fn weights(table: &WeightTable) -> Vec<pb::OperatorWeight> {
    table
        .entries()
        .iter()
        .map(|entry| pb::OperatorWeight {
            operator_id: entry.operator_id,
            weight: entry.weight.get(),
        })
        .collect()
}
