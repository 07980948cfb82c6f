use tonic::{Request, Response, Status};

use super::{timestamp, unknown_id_first};
use crate::{
    Result,
    domain::{MaxLoad, NewOperator, Operator, OperatorChanges, OperatorName, PageRequest},
    proto::{self as pb, operator_service_server::OperatorService},
    repository::Repository,
};

pub struct OperatorApi {
    repository: Repository,
}

impl OperatorApi {
    pub fn new(repository: Repository) -> Self {
        Self { repository }
    }
}

#[tonic::async_trait]
impl OperatorService for OperatorApi {
    async fn create_operator(
        &self,
        request: Request<pb::CreateOperatorRequest>,
    ) -> Result<Response<pb::Operator>, Status> {
        let new = NewOperator::try_from(request.into_inner())?;
        Ok(Response::new(
            self.repository.create_operator(new).await?.into(),
        ))
    }

    async fn get_operator(
        &self,
        request: Request<pb::GetOperatorRequest>,
    ) -> Result<Response<pb::Operator>, Status> {
        let pb::GetOperatorRequest { id } = request.into_inner();
        Ok(Response::new(
            self.repository.get_operator(id).await?.into(),
        ))
    }

    async fn list_operators(
        &self,
        request: Request<pb::ListOperatorsRequest>,
    ) -> Result<Response<pb::ListOperatorsResponse>, Status> {
        let pb::ListOperatorsRequest {
            page_size,
            page_token,
            is_active,
        } = request.into_inner();
        let page = PageRequest::parse(page_size, &page_token)?;
        let page = self.repository.list_operators(page, is_active).await?;
        Ok(Response::new(pb::ListOperatorsResponse {
            operators: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_operator(
        &self,
        request: Request<pb::UpdateOperatorRequest>,
    ) -> Result<Response<pb::Operator>, Status> {
        let request = request.into_inner();
        let id = request.id;
        let (id, changes) = match parse_update(request) {
            Ok(update) => update,
            Err(invalid) => {
                return Err(unknown_id_first(invalid, self.repository.get_operator(id))
                    .await
                    .into());
            }
        };
        Ok(Response::new(
            self.repository.update_operator(id, changes).await?.into(),
        ))
    }

    async fn release_operator_contacts(
        &self,
        request: Request<pb::ReleaseOperatorContactsRequest>,
    ) -> Result<Response<pb::ReleaseOperatorContactsResponse>, Status> {
        let pb::ReleaseOperatorContactsRequest {
            operator_id,
            include_accepted,
        } = request.into_inner();
        let moved = self
            .repository
            .release_operator_contacts(operator_id, include_accepted)
            .await?;
        Ok(Response::new(pb::ReleaseOperatorContactsResponse {
            contacts: moved.into_iter().map(Into::into).collect(),
        }))
    }
}

impl TryFrom<pb::CreateOperatorRequest> for NewOperator {
    type Error = crate::Error;

    fn try_from(request: pb::CreateOperatorRequest) -> Result<Self> {
        let pb::CreateOperatorRequest {
            name,
            is_active,
            max_load,
        } = request;
        Ok(Self {
            name: OperatorName::parse("name", &name)?,
            is_active: is_active.unwrap_or(true),
            max_load: MaxLoad::parse("max_load", max_load)?,
        })
    }
}

fn parse_update(request: pb::UpdateOperatorRequest) -> Result<(i64, OperatorChanges)> {
    let pb::UpdateOperatorRequest {
        id,
        name,
        is_active,
        max_load,
    } = request;
    let changes = OperatorChanges::new(
        name.map(|name| OperatorName::parse("name", &name))
            .transpose()?,
        is_active,
        max_load
            .map(|max_load| MaxLoad::parse("max_load", max_load))
            .transpose()?,
    )?;
    Ok((id, changes))
}

impl From<Operator> for pb::Operator {
    fn from(operator: Operator) -> Self {
        let Operator {
            id,
            name,
            is_active,
            max_load,
            active_load,
            created_at,
        } = operator;
        Self {
            id,
            name,
            is_active,
            max_load,
            active_load,
            created_at: Some(timestamp(created_at)),
        }
    }
}
