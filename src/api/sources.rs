use tonic::{Request, Response, Status};

use super::{timestamp, unknown_id_first};
use crate::{
    Error, Result,
    domain::{BotId, NewSource, PageRequest, Source, SourceKey, SourceName, WeightTable},
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
        let pb::CreateSourceRequest { bot_id, name } = request;
        Ok(Self {
            bot_id: BotId::parse("bot_id", &bot_id)?,
            name: SourceName::parse("name", &name)?,
        })
    }
}

impl From<Source> for pb::Source {
    fn from(source: Source) -> Self {
        let Source {
            id,
            bot_id,
            name,
            created_at,
        } = source;
        Self {
            id,
            bot_id,
            name,
            created_at: Some(timestamp(created_at)),
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
